# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Throughput, peak memory and achieved FLOP rate of UniFlow's encode / decode / reconstruct, in float32 and
bfloat16, and the images/s of the shipped class-conditional pipeline, in one run.

Random weights for the reconstruction (nothing is downloaded). The machine is printed first: the CPU model, the
flags that decide its matmul speed (AVX2, AVX512, AVX512-BF16, AMX) and the dtype `uniflow_hf.hardware` picks for it.
For each dtype the rate of a matmul of the model's dominant shape is measured first, in that dtype: the practical
ceiling the achieved rate is compared with, and the estimate by which a configuration over `--budget` seconds is
skipped rather than run (bfloat16 on a CPU without AMX / AVX512-BF16 runs ~8x slower than float32). Each
configuration then runs once under `torch.utils.flop_counter.FlopCounterMode` and the peak-memory probe (which
doubles as the warm-up), then `--repeats` times; the best time is reported. On a CPU the rates use the CPU time of
this process (`time.process_time`), so that other programs sharing the cores do not distort them; the wall-clock
time is printed too. On a GPU they use the wall-clock time (synchronised).

    python benchmarks/bench_reconstruct.py --quick                  # small configs, seconds on a CPU
    python benchmarks/bench_reconstruct.py --release                # UniFlowConfig() at 448 px (~1 TFLOP / image)
    python benchmarks/bench_reconstruct.py --release --int8         # + int8 dynamic quantisation of the Linears (CPU)
    python benchmarks/bench_reconstruct.py --release --device cuda --dtype bfloat16 --autocast --compile
    python benchmarks/bench_reconstruct.py --batch-sizes 1 4 --resolutions 224 448 --steps 1 4 --profile

See benchmarks/README.md for the numbers and the GPU notes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import threading
import time

import torch


# encoder, then latent and decoder sizes
QUICK_CONFIG = dict(
    image_size=64, patch_size=8, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
    latent_channels=16, num_global_blocks=2, global_num_attention_heads=4, num_flow_head_blocks=4,
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OPS = ("encode", "decode", "reconstruct")


# ------------------------------------------------------------------------------------------------ FLOPs
def analytic_flops(config, resolution: int, steps: int, batch_size: int = 1) -> dict[str, int]:
    """Multiply-add FLOPs (2 per MAC) of the matmuls, convolutions and attention of a batch, as `FlopCounterMode`
    counts them (elementwise ops, norms and softmax are not counted)."""
    p, d = config.patch_size, config.hidden_size
    n = (resolution // p) ** 2  # patch tokens
    t = n + 1  # + CLS
    attention = lambda tokens: 4 * tokens * tokens * d  # noqa: E731  (QK^T and AV, all heads)
    encoder_layer = 2 * t * d * 3 * d + 2 * t * d * d + attention(t) + 4 * t * d * config.intermediate_size
    encode = 2 * n * d * config.patch_dim + config.num_hidden_layers * encoder_layer
    encode += 2 * n * d * d + 2 * n * d * config.latent_channels  # latent_proj
    mlp = int(d * config.global_mlp_ratio)
    global_block = 2 * n * d * 3 * d + 2 * n * d * d + attention(n) + 4 * n * d * mlp
    condition = 2 * n * config.latent_channels * d + 2 * n * d * d + config.num_global_blocks * global_block
    w, e, patch = config.flow_head_width, config.timestep_embedding_dim, config.patch_dim
    flow_step = 2 * n * patch * w + 2 * n * d * w  # input and condition projections
    flow_step += config.num_flow_head_blocks * 10 * n * w * w + 4 * n * w * w + 2 * n * w * patch
    time_embedding = 2 * e * w + 2 * w * w  # once per step for the whole batch (one time for every row)
    encode, decode = batch_size * encode, batch_size * (condition + steps * flow_step) + steps * time_embedding
    return {"encode": encode, "decode": decode, "reconstruct": encode + decode}


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    # The fused CPU attention kernel has no formula in torch: count it like the GPU ones.
    def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops}
    )


# ----------------------------------------------------------------------------------------------- timing
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory while a block runs, model weights included: CUDA's allocator peak, or on CPU the peak resident
    set size of the process (sampled every millisecond; it includes memory the allocator kept from earlier work)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            process = psutil.Process()
            self._running = True

            def sample():
                while self._running:
                    self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
                    time.sleep(0.001)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._running = False
            self._sampler.join()


def best_time(function, repeats: int, device: torch.device) -> tuple[float, float]:
    """(seconds to rate by, best wall-clock seconds): on a CPU the first is the best CPU time of this process."""
    wall, cpu = [], []
    for _ in range(repeats):
        _synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        _synchronize(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return (min(cpu) if device.type == "cpu" else min(wall)), min(wall)


def matmul_gflops(
    config, resolution: int, device: torch.device, dtype: torch.dtype, repeats: int, batch_size: int = 1,
    max_seconds: float = 5.0,
) -> tuple[float, str]:
    """(GFLOP/s, what was measured) of the model's dominant matmul over a batch, (batch·tokens x hidden) @ (hidden x
    intermediate), run as its Linear layers run it: `F.linear` with an (intermediate x hidden) weight. The layout
    matters: on an AVX2-only CPU a bfloat16 `torch.mm` with a row-major (hidden x intermediate) right operand runs at
    0.4 GFLOP/s, the same product with the Linear layout at 10 GFLOP/s (float32: ~90 either way). The batch matters on a
    GPU: one image's 1025 tokens leave most of an H100 idle. A 64-row probe is timed first; where the full shape would
    take over `max_seconds`, the probe's rate is the answer, so the measurement itself cannot hang."""
    tokens = batch_size * ((resolution // config.patch_size) ** 2 + 1)
    hidden, intermediate = config.hidden_size, config.intermediate_size

    def rate(rows: int, times: int) -> float:
        inputs = torch.randn(rows, hidden, device=device, dtype=dtype)
        weight = torch.randn(intermediate, hidden, device=device, dtype=dtype)
        torch.nn.functional.linear(inputs, weight)  # warm-up
        seconds, _ = best_time(lambda: torch.nn.functional.linear(inputs, weight), times, device)
        return 2 * rows * hidden * intermediate / seconds / 1e9

    probe_rows = min(tokens, 64)
    probe = rate(probe_rows, 2)
    if 2 * tokens * hidden * intermediate / (probe * 1e9) * max(repeats, 3) > max_seconds:
        return probe, f"({probe_rows} x {hidden}) @ ({hidden} x {intermediate}); the full shape would take too long"
    return rate(tokens, max(repeats, 3)), f"({tokens} x {hidden}) @ ({hidden} x {intermediate})"


def describe_machine(device: torch.device) -> str:
    """The device, and for a CPU its model, the flags that decide its matmul speed and the dtype "auto" picks."""
    from uniflow_hf.hardware import choose_dtype, cpu_flags, cpu_model_name

    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}; dtype auto -> {choose_dtype('auto', device)}"
    flags = cpu_flags()
    relevant = [flag for flag in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
                if flag in flags]
    return (
        f"CPU {cpu_model_name()} ({os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads); flags: "
        f"{' '.join(relevant) or 'unknown'}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}\n"
        f"dtype auto -> {choose_dtype('auto', device)}"
    )


# ------------------------------------------------------------------------------------------------ runs
def build_model(config, device, attn_implementation):
    from uniflow_hf import UniFlowModel

    torch.manual_seed(0)
    model = UniFlowModel._from_config(config, attn_implementation=attn_implementation).eval()
    with torch.no_grad():  # fill the zero-initialised adaLN / output layers, so that every layer matters
        for parameter in model.parameters():
            if parameter.ndim == 2 and not parameter.any():
                parameter.normal_(std=0.02)
    return model.to(device)


def model_in_dtype(model, dtype: torch.dtype, args):
    """The float32 `model`, or a copy with its weights in `dtype` (as `from_pretrained(dtype=...)` loads it; with
    `--autocast` the float32 weights run under `torch.autocast` instead); compiled in place with `--compile` (the
    modules keep their type and parameter names)."""
    if dtype != torch.float32 and not args.autocast:
        model = copy.deepcopy(model).to(dtype)
    if args.compile:
        model.vision_model.compile()
        model.flow_head.compile()
    return model


def run_op(model, op: str, pixel_values, latents, noise, steps: int):
    height, width = pixel_values.shape[-2:]
    with torch.inference_mode():
        if op == "encode":
            return model.encode(pixel_values)
        if op == "decode":
            return model.decode(latents, noise=noise, num_inference_steps=steps, height=height, width=width)
        return model.reconstruct(pixel_values, noise=noise, num_inference_steps=steps)


def benchmark(args) -> list[dict]:
    from uniflow_hf import UniFlowConfig

    device = torch.device(args.device)
    if args.int8 and (device.type != "cpu" or args.compile):
        raise SystemExit("--int8 (dynamic quantisation) is a CPU path, without --compile.")
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    config = UniFlowConfig(**({} if args.release else QUICK_CONFIG), **json.loads(args.config or "{}"))
    print(
        f"device={device} dtypes={' '.join(args.dtypes)} ({'autocast' if args.autocast else 'weights cast'}) "
        f"attention={args.attn_implementation} compile={args.compile} int8={args.int8} torch={torch.__version__}\n"
        f"{describe_machine(device)}\nbudget: {args.budget:.0f} s estimated per configuration (warm-up + "
        f"{args.repeats} timed runs, at the measured matmul rate); configurations over it are skipped"
    )
    rows = []
    if args.resolutions:
        model = build_model(config, device, args.attn_implementation)
        for dtype_name in args.dtypes:
            rows += benchmark_dtype(args, config, model, dtype_name, device)
    for dtype_name in args.dtypes if args.pipeline_batch_sizes else ():
        rows += benchmark_pipeline(args, dtype_name, device)
    return rows


def benchmark_dtype(args, config, model, dtype_name: str, device: torch.device) -> list[dict]:
    """encode / decode / reconstruct rows of one dtype, each against that dtype's matmul rate."""
    dtype = DTYPES[dtype_name]
    model = model_in_dtype(model, dtype, args)
    autocast = torch.autocast(device.type, dtype=dtype) if args.autocast and dtype != torch.float32 else None
    autocast = autocast or contextlib.nullcontext()
    input_dtype = torch.float32 if args.autocast else dtype
    quantized = None
    if args.int8 and dtype == torch.float32:
        from uniflow_hf.evaluation import quantize_dynamic_int8

        quantized = quantize_dynamic_int8(model)
    rows = []
    for resolution in args.resolutions:
        ceiling, measured = matmul_gflops(config, resolution, device, dtype, args.repeats, max(args.batch_sizes))
        print(f"\n{resolution}px {dtype_name}: matmul rate {ceiling:.1f} GFLOP/s, {measured}")
        print(
            f"{'op':<12}{'batch':>6}{'steps':>6}{'ms':>10}{'wall ms':>10}{'img/s':>9}{'GFLOP/img':>11}{'counted':>9}"
            f"{'GFLOP/s':>9}{'of mm':>7}{'peak MB':>9}"
        )
        for batch_size in args.batch_sizes:
            generator = torch.Generator().manual_seed(0)
            pixel_values = torch.randn(batch_size, 3, resolution, resolution, generator=generator)
            num_tokens = (resolution // config.patch_size) ** 2
            noise = torch.randn(batch_size, num_tokens, config.patch_dim, generator=generator)
            pixel_values, noise = pixel_values.to(device, input_dtype), noise.to(device, input_dtype)
            latents = None
            for steps in args.steps:
                ops = [op for op in args.ops if not (op == "encode" and steps != args.steps[0])]
                for op in ops:
                    expected = analytic_flops(config, resolution, steps, batch_size)[op] / batch_size
                    estimate = expected * batch_size * (1 + args.repeats) / (ceiling * 1e9)
                    if estimate > args.budget:
                        print(f"{op:<12}{batch_size:>6}{steps:>6}  skipped: ~{estimate:.0f} s at {ceiling:.2f} "
                              f"GFLOP/s is over the {args.budget:.0f} s budget")
                        rows.append(dict(op=op, dtype=dtype_name, resolution=resolution, batch_size=batch_size,
                                         steps=steps, skipped=True, estimated_s=estimate, matmul_gflops=ceiling))
                        continue
                    if op == "decode" and latents is None:
                        with torch.inference_mode(), autocast:
                            latents = model.encode(pixel_values)
                    call = lambda: run_op(model, op, pixel_values, latents, noise, steps)  # noqa: E731
                    counter = _flop_counter()
                    with PeakMemory(device) as memory, counter, autocast:
                        call()  # warm-up (and compilation) under the FLOP counter and the memory probe
                    counted = counter.get_total_flops() / batch_size
                    with autocast:
                        seconds, wall_seconds = best_time(call, args.repeats, device)
                    gflops = expected * batch_size / seconds / 1e9
                    row = dict(op=op, dtype=dtype_name, resolution=resolution, batch_size=batch_size, steps=steps,
                               ms=seconds * 1e3, wall_ms=wall_seconds * 1e3, images_per_s=batch_size / seconds,
                               gflop_per_image=expected / 1e9, counted_gflop_per_image=counted / 1e9, gflops=gflops,
                               matmul_gflops=ceiling, fraction_of_matmul=gflops / ceiling,
                               peak_mb=memory.peak_bytes / 2**20)
                    rows.append(row)
                    print(f"{op:<12}{batch_size:>6}{steps:>6}{row['ms']:>10.1f}{row['wall_ms']:>10.1f}"
                          f"{row['images_per_s']:>9.2f}{row['gflop_per_image']:>11.1f}"
                          f"{row['counted_gflop_per_image']:>9.1f}{gflops:>9.1f}{row['fraction_of_matmul']:>7.0%}"
                          f"{row['peak_mb']:>9.0f}")
                    if quantized is not None and op == "reconstruct":
                        rows.append(
                            compare_int8(model, quantized, pixel_values, noise, steps, args.repeats, device, row)
                        )
                    if args.profile and op == "reconstruct":
                        profile(call)
    return rows


def benchmark_pipeline(args, dtype_name: str, device: torch.device) -> list[dict]:
    """images/s of the shipped class-conditional pipeline (UniFlow-FMNIST, its default steps) per batch size, warmed
    up once at the smallest; a batch whose estimate (the previous batch's time per image, an over-estimate as larger
    batches run faster per image) is over the budget is skipped."""
    from diffusers import DiffusionPipeline

    import uniflow_hf

    pipe = DiffusionPipeline.from_pretrained(uniflow_hf.FMNIST_MODEL_PATH, dtype=DTYPES[dtype_name]).to(device)
    pipe.set_progress_bar_config(disable=True)
    num_classes = len(pipe.labels)
    print(f"\nclass-conditional pipeline (shipped UniFlow-FMNIST, {dtype_name}, default steps)")
    print(f"{'batch':>6}{'ms':>10}{'wall ms':>10}{'img/s':>9}{'wall img/s':>11}")
    rows, seconds_per_image = [], 0.0
    for batch_size in sorted(args.pipeline_batch_sizes):
        estimate = seconds_per_image * batch_size * args.repeats
        if estimate > args.budget:
            print(f"{batch_size:>6}  skipped: ~{estimate:.0f} s is over the {args.budget:.0f} s budget")
            rows.append(
                dict(op="pipeline", dtype=dtype_name, batch_size=batch_size, skipped=True, estimated_s=estimate)
            )
            continue
        labels = [index % num_classes for index in range(batch_size)]
        call = lambda: pipe(labels, generator=torch.manual_seed(0), output_type="pt")  # noqa: E731
        with torch.inference_mode():
            if not rows:
                call()  # warm-up
            seconds, wall_seconds = best_time(call, args.repeats, device)
        seconds_per_image = seconds / batch_size
        row = dict(op="pipeline", dtype=dtype_name, batch_size=batch_size, ms=seconds * 1e3,
                   wall_ms=wall_seconds * 1e3, images_per_s=batch_size / seconds,
                   wall_images_per_s=batch_size / wall_seconds)
        rows.append(row)
        print(f"{batch_size:>6}{row['ms']:>10.1f}{row['wall_ms']:>10.1f}{row['images_per_s']:>9.1f}"
              f"{row['wall_images_per_s']:>11.1f}")
    return rows


def compare_int8(model, quantized, pixel_values, noise, steps, repeats, device, fp32_row) -> dict:
    from uniflow_hf import UniFlowImageProcessor
    from uniflow_hf.metrics import peak_signal_noise_ratio

    call = lambda: run_op(quantized, "reconstruct", pixel_values, None, noise, steps)  # noqa: E731
    reference = run_op(model, "reconstruct", pixel_values, None, noise, steps)
    output = call()
    seconds, _ = best_time(call, repeats, device)
    error = (output - reference).abs().max().item()
    processor = UniFlowImageProcessor()
    psnr = peak_signal_noise_ratio(
        processor.postprocess(output, output_type="pt"), processor.postprocess(reference, output_type="pt")
    ).mean().item()
    print(
        f"{'  int8':<12}{pixel_values.shape[0]:>6}{steps:>6}{seconds * 1e3:>10.1f}{'':>10}"
        f"{pixel_values.shape[0] / seconds:>9.2f}   speed-up x{fp32_row['ms'] / 1e3 / seconds:.2f}; vs float32: max "
        f"|error| {error:.3g} (normalised pixels, outputs up to {reference.abs().max().item():.3g}), PSNR {psnr:.1f} dB"
    )
    return dict(op="reconstruct-int8", batch_size=pixel_values.shape[0], steps=steps, ms=seconds * 1e3,
                speedup=fp32_row["ms"] / 1e3 / seconds, max_abs_error=error, psnr_vs_float32=psnr)


def profile(call) -> None:
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as profiler:
        call()
    sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=15))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a small config (the default)")
    mode.add_argument("--release", action="store_true", help="UniFlowConfig() (InternViT-300M + decoder) at 448 px")
    parser.add_argument("--config", help='JSON overrides of the config, e.g. \'{"num_hidden_layers": 4}\'')
    parser.add_argument("--resolutions", type=int, nargs="*", help="none (an empty list): the pipeline rows only")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, nargs="+", default=[1])
    parser.add_argument("--ops", nargs="+", choices=OPS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", "--dtype", nargs="+", choices=sorted(DTYPES), default=["float32", "bfloat16"],
                        help="each is benchmarked against its own matmul rate (default: float32 and bfloat16)")
    parser.add_argument("--autocast", action="store_true",
                        help="half precision under torch.autocast with float32 weights (default: cast the weights)")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="skip a configuration whose estimated time (warm-up + repeats) is over this (seconds)")
    parser.add_argument("--pipeline-batch-sizes", type=int, nargs="*", default=[1, 64, 256],
                        help="images/s of the shipped class-conditional pipeline at these batch sizes ('' for none)")
    parser.add_argument("--attn-implementation", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder and the flow head")
    parser.add_argument("--int8", action="store_true", help="also time int8 dynamic quantisation (CPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, all cores)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one reconstruct")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    if args.resolutions is None:
        args.resolutions = [448] if args.release else [64, 128]
    if args.ops is None:
        args.ops = ["reconstruct"] if args.release else list(OPS)
    rows = benchmark(args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
