"""The hardware-aware dtype (`uniflow_hf.hardware`): detection with the capability mocked both ways, this machine's
answer, and the quality guard that makes bfloat16 a safe "auto" choice (bf16 vs fp32 reconstruction >= 40 dB)."""

import time

import pytest
import torch

from uniflow_hf import hardware


AMX_CPUINFO = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\nmodel name\t: other\n"  # noqa: E501
AVX512_BF16_CPUINFO = "model name\t: AMD EPYC 9654\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
AVX2_CPUINFO = "model name\t: AMD EPYC 7763\nflags\t\t: fpu sse4_2 avx avx2 fma\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the detection at a fake /proc/cpuinfo holding the given text (None: no such file)."""

    def use(text):
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(hardware, "CPUINFO_PATH", str(path))

    return use


@pytest.mark.parametrize(
    "text, expected, named",
    [
        (AMX_CPUINFO, torch.bfloat16, "amx_bf16 and avx512_bf16"),
        (AVX512_BF16_CPUINFO, torch.bfloat16, "avx512_bf16"),
        (AVX2_CPUINFO, torch.float32, "neither AMX-BF16 nor AVX512-BF16 (avx2"),
        (None, torch.float32, "no flags to read"),
    ],
    ids=["amx", "avx512-bf16", "avx2-only", "no-cpuinfo"],
)
def test_auto_on_cpu_follows_the_detected_flags(cpuinfo, text, expected, named):
    cpuinfo(text)
    choice = hardware.choose_dtype("auto", "cpu")
    assert choice.dtype == expected
    assert named in choice.reason and choice.reason.startswith("auto: ")
    if text is not None:
        model = text.split("model name\t: ")[1].split("\n")[0]
        assert hardware.cpu_model_name() == model and model in choice.reason
    assert str(choice).startswith(f"{choice.name} (auto: ")
    assert hardware.resolve_dtype("auto", "cpu") == expected


@pytest.mark.parametrize("supported, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cuda_follows_native_bf16_support(monkeypatch, supported, expected):
    calls = []

    def is_bf16_supported(including_emulation=True):
        calls.append(including_emulation)
        return supported

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Test GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    choice = hardware.choose_dtype("auto")  # the default device is CUDA when it is available
    assert choice.dtype == expected and "NVIDIA Test GPU" in choice.reason
    assert calls == [False]  # emulated bfloat16 does not count as fast


def test_this_machine_gets_the_dtype_its_flags_call_for():
    """The real detection, read against /proc/cpuinfo here (the development machine, an AVX2-only AMD EPYC, gets
    float32; an AMX or AVX512-BF16 machine gets bfloat16), or against the fake one of `pytest --cpu-flags`."""
    try:
        with open(hardware.CPUINFO_PATH) as handle:
            flags = next(line for line in handle if line.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        pytest.skip(f"no x86 {hardware.CPUINFO_PATH} on this machine")
    fast = "amx_bf16" in flags or "avx512_bf16" in flags
    choice = hardware.choose_dtype("auto", "cpu")
    print(f"this machine: {choice}")
    assert choice.dtype == (torch.bfloat16 if fast else torch.float32)


def test_explicit_choices_are_kept_and_slow_ones_say_so(cpuinfo):
    cpuinfo(AVX2_CPUINFO)
    assert hardware.choose_dtype("float32", "cpu").reason == "requested"
    assert hardware.resolve_dtype(torch.float32, "cpu") == torch.float32
    slow_bf16 = hardware.choose_dtype(torch.bfloat16, "cpu")
    assert slow_bf16.dtype == torch.bfloat16 and "slow" in slow_bf16.reason
    slow_fp16 = hardware.choose_dtype("float16", "cpu")
    assert slow_fp16.dtype == torch.float16 and "slow" in slow_fp16.reason
    cpuinfo(AMX_CPUINFO)
    assert hardware.choose_dtype("bfloat16", "cpu").reason == "requested"


@pytest.mark.parametrize("value", ["fp16", "bf16", "half", torch.int8, torch.float64, None])
def test_bad_choices_are_refused_with_the_accepted_ones(value):
    with pytest.raises(ValueError, match="use one of auto, float32, bfloat16, float16"):
        hardware.choose_dtype(value, "cpu")


def test_other_devices_are_not_assumed_to_run_bf16():
    choice = hardware.choose_dtype("auto", "meta")
    assert choice.dtype == torch.float32 and "not assumed" in choice.reason


# ------------------------------------------------------------------------------------------------- quality guard
def _fp32_and_bf16_reconstructions(model, pixel_values):
    """(float32, bfloat16) reconstructions of `pixel_values`, same seeded noise; the second with the weights, inputs
    and noise cast to bfloat16 (the model is left in bfloat16)."""
    height, width = pixel_values.shape[-2:]
    num_tokens = (height // model.config.patch_size) * (width // model.config.patch_size)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(pixel_values.shape[0], num_tokens, model.config.patch_dim, generator=generator)
    with torch.inference_mode():
        reference = model.reconstruct(pixel_values, noise=noise)
        model.to(torch.bfloat16)
        output = model.reconstruct(pixel_values.bfloat16(), noise=noise.bfloat16())
    assert output.dtype == torch.bfloat16
    return reference, output.float()


def _garment_like_images(count, seed=0):
    """Grayscale 28 px images of one bright filled rectangle or ellipse on black, Fashion-MNIST-like inputs the
    shipped tokenizer reconstructs well (31-46 dB)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        image = Image.new("L", (28, 28))
        box = [*map(int, rng.integers(2, 10, 2)), *map(int, rng.integers(18, 26, 2))]
        draw = ImageDraw.Draw(image)
        (draw.ellipse if index % 2 else draw.rectangle)(box, fill=int(rng.integers(120, 255)))
        images.append(image)
    return images


def test_bf16_reconstruction_of_the_shipped_model_is_within_40_db_of_fp32():
    """The shipped UniFlow-FMNIST tokenizer on 8 images, compared as the [0, 1] images users get (measured: 49-53
    dB; on real Fashion-MNIST test images 47-54 dB)."""
    import uniflow_hf
    from uniflow_hf import UniFlowImageProcessor, UniFlowModel
    from uniflow_hf.metrics import peak_signal_noise_ratio

    model = UniFlowModel.from_pretrained(uniflow_hf.FMNIST_MODEL_PATH, subfolder="tokenizer").eval()
    processor = UniFlowImageProcessor.from_image_size(model.config.image_size)
    pixel_values = processor(_garment_like_images(8), return_tensors="pt").pixel_values

    reference, output = _fp32_and_bf16_reconstructions(model, pixel_values)
    psnr = peak_signal_noise_ratio(
        processor.postprocess(output, output_type="pt"), processor.postprocess(reference, output_type="pt")
    )
    print(f"shipped model, bf16 vs fp32: PSNR {psnr.min():.1f} dB (lowest of 8)")
    assert psnr.min() >= 40


def test_bf16_reconstruction_at_release_width_is_within_40_db_of_fp32():
    """Random weights at the release widths: the defaults of `UniFlowConfig` (InternViT-300M: hidden 1024, MLP 4096,
    16 heads, patch 14; latent 64; the 6 global blocks at 1024 / 16 heads; the flow head's 12 blocks at width 1024)
    are kept, except, so that a bfloat16 run takes seconds on an AVX2-only CPU (its bf16 Linear layers ~8x slower
    than float32): 1 encoder layer instead of 24, and 28 px images (4 patch tokens) instead of 448 px (1024). The
    zero-initialised adaLN gates and output layers get small random weights, so every layer shapes the output; the
    PSNR is taken over the raw (normalised-pixel) outputs, with the float32 output's value range as data range.
    Measured on the AVX2-only AMD EPYC: 58.4 dB; the two reconstructions 1.2 s, the whole test ~8 s."""
    from uniflow_hf import UniFlowConfig, UniFlowModel

    torch.manual_seed(0)
    model = UniFlowModel(UniFlowConfig(image_size=28, num_hidden_layers=1)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2 and not parameter.any():
                parameter.normal_(std=0.02)
    pixel_values = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    reference, output = _fp32_and_bf16_reconstructions(model, pixel_values)
    seconds = time.perf_counter() - start
    data_range = reference.amax(dim=(1, 2, 3)) - reference.amin(dim=(1, 2, 3))
    psnr = 10 * torch.log10(data_range**2 / (output - reference).square().mean(dim=(1, 2, 3)))
    print(f"release width, bf16 vs fp32: PSNR {psnr.min():.1f} dB, {seconds:.1f} s (fp32 + bf16)")
    assert psnr.min() >= 40


# ------------------------------------------------------------------------- the benchmark and the GPU check script
def _load_benchmark(name):
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def gpu_check():
    return _load_benchmark("gpu_check")


def test_gpu_check_refuses_to_run_without_cuda(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "CUDA is not available" in capsys.readouterr().out


def test_gpu_check_dry_run_on_cpu(gpu_check, monkeypatch, capsys):
    """`--device cpu --tiny`: every check but torch.compile (minutes on this CPU; run by hand: it passed) on a tiny
    config, and a failing check makes it exit 1."""
    arguments = ["--device", "cpu", "--tiny", "--no-compile", "--repeats", "1"]
    assert gpu_check.main(arguments) == 0
    output = capsys.readouterr().out
    assert output.count("PASS  ") == 3 and "all checks passed" in output and "float32, eager" in output
    monkeypatch.setattr(gpu_check, "MIN_PSNR", 1000.0)
    assert gpu_check.main(arguments) == 1
    assert "FAILED: bf16 vs fp32 reconstruction, shipped model" in capsys.readouterr().out


def test_benchmark_skips_what_the_measured_matmul_rate_says_would_take_too_long(monkeypatch, capsys, tmp_path):
    """bench_reconstruct.py on an emulated-bf16 machine (its bfloat16 matmul rate mocked to 1 MFLOP/s): the float32
    row runs, the bfloat16 row is skipped with its estimate; the machine and its "auto" dtype are printed."""
    import json

    bench = _load_benchmark("bench_reconstruct")
    measure = bench.matmul_gflops

    def matmul_gflops(config, resolution, device, dtype, *args, **kwargs):
        if dtype == torch.bfloat16:
            return 1e-3, "mocked"
        return measure(config, resolution, device, dtype, *args, **kwargs)

    monkeypatch.setattr(bench, "matmul_gflops", matmul_gflops)
    rows_file = tmp_path / "rows.json"
    argv = ["--resolutions", "32", "--ops", "reconstruct", "--repeats", "1", "--pipeline-batch-sizes"]
    bench.main([*argv, "--budget", "60", "--json", str(rows_file)])
    output = capsys.readouterr().out
    assert "dtype auto -> " in output and "torch CPU capability" in output
    float32, bfloat16 = json.loads(rows_file.read_text())
    assert float32["dtype"] == "float32" and float32["images_per_s"] > 0 and "skipped" not in float32
    assert bfloat16["dtype"] == "bfloat16" and bfloat16["skipped"] and bfloat16["estimated_s"] > 60
    assert "skipped: ~" in output and "over the 60 s budget" in output
