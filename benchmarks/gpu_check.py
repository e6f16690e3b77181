# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The GPU path in one prepared run (a few minutes on one H100): bfloat16 against float32 reconstruction (PSNR, at the
release size and on the shipped model), SDPA against eager attention, `torch.compile` of the encoder and the flow
head against eager, and reconstruction images/s in each. Prints the figures and a PASS/FAIL line per check; exits 1
if a check fails, 2 without CUDA.

    python benchmarks/gpu_check.py                          # CUDA: UniFlowConfig() (release) at 448 px, batch 32
    python benchmarks/gpu_check.py --device cpu --tiny      # the same checks on a tiny config: a dry run, seconds

Random weights for the release model (nothing is downloaded); TF32 is off so that float32 is float32.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_reconstruct import best_time, build_model  # noqa: E402


TINY_CONFIG = dict(
    image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    latent_channels=8, num_global_blocks=1, global_num_attention_heads=4, num_flow_head_blocks=2,
)
MIN_PSNR = 40.0
ATTENTION_TOLERANCE = 1e-3  # max |SDPA - eager| of the float32 reconstruction, relative to its largest value


def psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Lowest per-image PSNR (dB) of `output` against `reference`, with the reference's value range as data range."""
    output, reference = output.double().flatten(1), reference.double().flatten(1)
    data_range = reference.amax(dim=1) - reference.amin(dim=1)
    return (10 * torch.log10(data_range**2 / (output - reference).square().mean(dim=1))).min().item()


class Checks:
    def __init__(self):
        self.failed = []

    def record(self, name: str, passed: bool, figure: str) -> None:
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {figure}", flush=True)
        if not passed:
            self.failed.append(name)


def reconstruct(model, pixel_values, noise):
    with torch.inference_mode():
        return model.reconstruct(pixel_values.to(model.dtype), noise=noise.to(model.dtype)).float()


def images_per_second(model, pixel_values, noise, device, repeats: int) -> float:
    reconstruct(model, pixel_values, noise)  # warm-up (compilation)
    _, wall_seconds = best_time(lambda: reconstruct(model, pixel_values, noise), repeats, device)
    return pixel_values.shape[0] / wall_seconds


def box_images(count: int, size: int, processor) -> torch.Tensor:
    """Normalised pixel values of grayscale images of one bright box on black (Fashion-MNIST-like inputs)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(count, 1, size, size)
    for image in images:
        top, left = torch.randint(2, size // 3, (2,), generator=generator).tolist()
        bottom, right = torch.randint(2 * size // 3, size - 2, (2,), generator=generator).tolist()
        image[:, top:bottom, left:right] = torch.empty(()).uniform_(0.5, 1.0, generator=generator)
    mean, std = torch.tensor(processor.image_mean)[:, None, None], torch.tensor(processor.image_std)[:, None, None]
    return (images - mean) / std


def check_shipped_model(device, checks: Checks) -> None:
    import uniflow_hf
    from uniflow_hf import UniFlowImageProcessor, UniFlowModel

    model = UniFlowModel.from_pretrained(uniflow_hf.FMNIST_MODEL_PATH, subfolder="tokenizer").to(device).eval()
    processor = UniFlowImageProcessor.from_pretrained(uniflow_hf.FMNIST_MODEL_PATH, subfolder="image_processor")
    pixel_values = box_images(16, model.config.image_size, processor).to(device)
    noise = torch.randn(16, 16, model.config.patch_dim, generator=torch.Generator().manual_seed(1)).to(device)
    reference = reconstruct(model, pixel_values, noise)
    figure = psnr(reconstruct(model.to(torch.bfloat16), pixel_values, noise), reference)
    checks.record("shipped model, bf16 vs fp32 reconstruction", figure >= MIN_PSNR, f"PSNR {figure:.1f} dB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny config at 32 px instead of the release at 448 px")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 (release), 4 (tiny)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile check")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here: run this on a GPU machine, or `--device cpu --tiny` for a dry run.")
        return 2

    from uniflow_hf import UniFlowConfig
    from uniflow_hf.hardware import choose_dtype

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}; torch {torch.__version__}; dtype auto -> {choose_dtype('auto', device)}", flush=True)
    config = UniFlowConfig(**(TINY_CONFIG if args.tiny else {}))
    batch_size = args.batch_size or (4 if args.tiny else 32)
    size = config.image_size
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator).to(device)
    noise = torch.randn(batch_size, (size // config.patch_size) ** 2, config.patch_dim, generator=generator).to(device)
    checks, speeds = Checks(), {}

    start = time.perf_counter()
    model = build_model(config, device, "sdpa")
    print(f"model built ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"{size} px, batch {batch_size}) in {time.perf_counter() - start:.1f} s", flush=True)
    reference = reconstruct(model, pixel_values, noise)
    speeds["float32, sdpa"] = images_per_second(model, pixel_values, noise, device, args.repeats)

    eager = build_model(config, device, "eager")
    difference = (reconstruct(eager, pixel_values, noise) - reference).abs().max().item()
    scale = reference.abs().max().item()
    checks.record("SDPA vs eager, float32 reconstruction", difference <= ATTENTION_TOLERANCE * scale,
                  f"max |difference| {difference:.3g} (outputs up to {scale:.3g})")
    speeds["float32, eager"] = images_per_second(eager, pixel_values, noise, device, args.repeats)
    del eager

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16_output = reconstruct(bf16, pixel_values, noise)
    figure = psnr(bf16_output, reference)
    checks.record("bf16 vs fp32 reconstruction (release widths)" if not args.tiny else "bf16 vs fp32 reconstruction",
                  figure >= MIN_PSNR, f"PSNR {figure:.1f} dB")
    speeds["bfloat16, sdpa"] = images_per_second(bf16, pixel_values, noise, device, args.repeats)

    if not args.no_compile:
        start = time.perf_counter()
        bf16.vision_model.compile()
        bf16.flow_head.compile()
        compiled_output = reconstruct(bf16, pixel_values, noise)
        compile_seconds = time.perf_counter() - start
        figure = psnr(compiled_output, bf16_output)
        checks.record("torch.compile vs eager, bf16 reconstruction", figure >= MIN_PSNR,
                      f"PSNR {figure:.1f} dB (first call, compilation included: {compile_seconds:.0f} s)")
        speeds["bfloat16, sdpa, compiled"] = images_per_second(bf16, pixel_values, noise, device, args.repeats)
    del bf16, model

    check_shipped_model(device, checks)
    print(f"\nreconstruction, {size} px, batch {batch_size}, 1 decoder step (wall-clock, synchronised):")
    for path, rate in speeds.items():
        print(f"  {path:<28}{rate:>10.1f} images/s")
    print(f"\n{'FAILED: ' + ', '.join(checks.failed) if checks.failed else 'all checks passed'}")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
