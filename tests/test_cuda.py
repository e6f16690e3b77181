"""GPU checks: the same model on CUDA as on the CPU, half precision (bf16/fp16 weights and bf16 autocast), the
attention kernels, the pipelines and the shipped model on the GPU, training under mixed precision (Trainer, LoRA,
the latent generator) and LLaVA with the UniFlow tower.

Skipped without a CUDA device: CI and the development machine have none. Run them on a GPU machine with
`python -m pytest tests/test_cuda.py` (the last run is recorded in benchmarks/README.md, "GPU path")."""

import copy
from importlib import resources

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from uniflow_hf import (
    UniFlowClassConditionalPipeline,
    UniFlowConfig,
    UniFlowModel,
    UniFlowReconstructionPipeline,
)
from uniflow_hf.metrics import peak_signal_noise_ratio

from conftest import REPO_ROOT, TINY_CONFIG, pretrained_tiny_model, training_args
from test_generator_training import TINY_DIT, synthetic_dataset


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HALF = [torch.bfloat16, torch.float16]
# relative error of a half-precision forward against float32: about 2^-8 per rounding for bf16, 2^-11 for fp16
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3}


@pytest.fixture(autouse=True)
def exact_float32_matmuls():
    """float32 on the GPU must mean float32: no TF32 tensor-core rounding in the parity checks."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_error(output, reference):
    output, reference = output.double().cpu(), reference.double().cpu()
    assert torch.isfinite(output).all()
    return ((output - reference).norm() / reference.norm()).item()


def inputs(device="cpu", batch=2, size=32, seed=0):
    """Seeded pixel values and decoder noise for the tiny model (drawn on the CPU, then moved to `device`)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, size, size, generator=generator)
    noise = torch.randn(batch, (size // 8) ** 2, 192, generator=generator)
    return pixel_values.to(device), noise.to(device)


# ------------------------------------------------------------------------------------------------ the model
def test_cuda_matches_cpu_in_float32():
    model = pretrained_tiny_model().eval()
    pixel_values, noise = inputs()
    with torch.no_grad():
        latents = model.encode(pixel_values)
        images = model.reconstruct(pixel_values, noise=noise, num_inference_steps=3)
        gpu = copy.deepcopy(model).cuda()
        gpu_latents = gpu.encode(pixel_values.cuda())
        gpu_images = gpu.reconstruct(pixel_values.cuda(), noise=noise.cuda(), num_inference_steps=3)
    assert gpu_latents.device.type == gpu_images.device.type == "cuda"
    assert relative_error(gpu_latents, latents) < 1e-5
    assert relative_error(gpu_images, images) < 1e-5

    # the training losses and their gradients too
    timesteps = torch.rand(2, generator=torch.Generator().manual_seed(3)) * 1000
    losses = []
    for m, device in ((model, "cpu"), (gpu, "cuda")):
        m.train().enable_distillation()
        out = m(pixel_values.to(device), noise=noise.to(device), timesteps=timesteps.to(device))
        out.loss.backward()
        losses.append((out.loss.item(), out.distillation_loss.item(), m.latent_proj.fc1.weight.grad.clone()))
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)
    assert losses[1][1] == pytest.approx(losses[0][1], rel=1e-4, abs=1e-9)
    assert relative_error(losses[1][2], losses[0][2]) < 1e-4


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_weights(dtype, tmp_path):
    """`from_pretrained(dtype=...)` on the GPU: float32 pixels in, half-precision compute, float32-close output;
    the training loss runs and back-propagates in that dtype."""
    model = pretrained_tiny_model().eval()
    model.save_pretrained(tmp_path)
    half = UniFlowModel.from_pretrained(tmp_path, dtype=dtype).cuda().eval()
    assert half.dtype == dtype
    reference = copy.deepcopy(model).cuda()
    pixel_values, noise = inputs("cuda")
    with torch.no_grad():
        latents = half.encode(pixel_values)
        images = half.reconstruct(pixel_values, noise=noise, num_inference_steps=3)
        assert latents.dtype == images.dtype == dtype
        assert relative_error(latents, reference.encode(pixel_values)) < TOLERANCE[dtype]
        assert relative_error(images, reference.reconstruct(pixel_values, noise=noise, num_inference_steps=3)) < TOLERANCE[dtype]

    half.train().enable_distillation()
    output = half(pixel_values, generator=torch.Generator("cuda").manual_seed(0), return_loss=True)
    output.loss.backward()
    assert torch.isfinite(output.loss) and output.loss.dtype == torch.float32
    grads = [p.grad for p in half.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == dtype and torch.isfinite(g).all() for g in grads)


def test_bf16_autocast_keeps_float32_weights_and_loss():
    model = pretrained_tiny_model().eval().cuda()
    pixel_values, noise = inputs("cuda")
    with torch.no_grad():
        reference = model.reconstruct(pixel_values, noise=noise, num_inference_steps=3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            images = model.reconstruct(pixel_values, noise=noise, num_inference_steps=3)
    assert relative_error(images, reference) < TOLERANCE[torch.bfloat16]

    model.train().enable_distillation()
    timesteps = torch.full((2,), 937.5, device="cuda")
    reference = model(pixel_values, noise=noise, timesteps=timesteps)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output = model(pixel_values, noise=noise, timesteps=timesteps)
    output.loss.backward()
    assert output.loss.dtype == torch.float32
    assert output.flow_loss.item() == pytest.approx(reference.flow_loss.item(), rel=5e-2)
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_attention_implementations_agree_on_cuda(dtype):
    config = UniFlowConfig(**TINY_CONFIG)
    torch.manual_seed(0)
    eager = UniFlowModel._from_config(config, attn_implementation="eager").eval()
    sdpa = UniFlowModel._from_config(config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    eager, sdpa = eager.to("cuda", dtype), sdpa.to("cuda", dtype)
    pixel_values = inputs("cuda")[0]
    tolerance = 1e-5 if dtype == torch.float32 else TOLERANCE[dtype]
    with torch.no_grad():
        reference = eager.encode(pixel_values)
        assert relative_error(sdpa.encode(pixel_values), reference) < tolerance
        if dtype != torch.float32:  # the FlashAttention kernel takes our call (no mask, head dim 16)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                assert relative_error(sdpa.encode(pixel_values), reference) < tolerance


def test_torch_compile_on_cuda():
    model = pretrained_tiny_model().eval().cuda()
    pixel_values, noise = inputs("cuda")
    with torch.no_grad():
        reference = model.reconstruct(pixel_values, noise=noise, num_inference_steps=2)
        model.vision_model.compile(fullgraph=True)
        model.flow_head.compile(fullgraph=True)
        assert relative_error(model.reconstruct(pixel_values, noise=noise, num_inference_steps=2), reference) < 1e-4


# -------------------------------------------------------------------------------------------------- pipelines
def test_reconstruction_pipeline_on_cuda_follows_the_generator():
    pipeline = UniFlowReconstructionPipeline(tokenizer=pretrained_tiny_model().eval())
    pipeline.set_progress_bar_config(disable=True)
    images = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(2)]
    on_cpu = pipeline(images, generator=torch.Generator().manual_seed(0), output_type="pt").images
    pipeline.to("cuda")
    # a CPU generator gives the CPU's noise, so the same images; a CUDA generator is repeatable
    same = pipeline(images, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert same.device.type == "cpu" and relative_error(same, on_cpu) < 1e-5
    a, b = (pipeline(images, generator=torch.Generator("cuda").manual_seed(1), output_type="np").images for _ in "ab")
    assert np.array_equal(a, b) and 0 <= a.min() and a.max() <= 1


SHIPPED = str(resources.files("uniflow_hf") / "models" / "uniflow-fmnist")


@pytest.fixture(scope="module")
def shipped_fp32():
    pipeline = UniFlowClassConditionalPipeline.from_pretrained(SHIPPED).to("cuda")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def shipped_samples(pipeline):
    generators = [torch.Generator().manual_seed(seed) for seed in range(20)]
    return pipeline([i % 10 for i in range(20)], generator=generators, output_type="pt").images


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_shipped_model_in_half_precision(shipped_fp32, dtype):
    """UniFlow-FMNIST's trained weights in bf16/fp16 on the GPU: close to the float32 samples (same CPU
    generators), and the tokenizer reconstructs them about as well as in float32."""
    from uniflow_hf.recipes.fmnist import fmnist_pixel_values, reconstruct_grayscale, to_unit_range

    half = UniFlowClassConditionalPipeline.from_pretrained(SHIPPED, torch_dtype=dtype).to("cuda")
    half.set_progress_bar_config(disable=True)
    assert half.transformer.dtype == half.tokenizer.dtype == dtype
    reference = shipped_samples(shipped_fp32)
    samples = shipped_samples(half)
    assert samples.dtype == torch.float32 and torch.isfinite(samples).all()
    # bf16's rounding grows over the 25 latent-flow steps into small changes of the samples; fp16 stays closer
    assert peak_signal_noise_ratio(samples, reference).mean().item() > (22 if dtype == torch.bfloat16 else 30)

    pixel_values = fmnist_pixel_values((reference.mean(1) * 255).round().byte().numpy()).cuda()
    target = to_unit_range(pixel_values)[:, None]

    def reconstruction_psnr(tokenizer):
        images = reconstruct_grayscale(tokenizer, pixel_values)[:, None].float()
        return peak_signal_noise_ratio(images, target).mean().item()

    assert reconstruction_psnr(half.tokenizer) > reconstruction_psnr(shipped_fp32.tokenizer) - 1.0


def test_generate_command_runs_on_cuda(tmp_path, capsys):
    """`uniflow-hf generate` with no `--device` runs on Accelerate's device, the GPU, in the dtype `auto` picks
    for it (bfloat16 where the GPU has it natively)."""
    from unittest import mock

    from uniflow_hf.cli import main
    from uniflow_hf.commands import generate

    loaded, load = [], generate.load_class_conditional_pipeline

    def load_and_keep(*args, **kwargs):
        loaded.append(load(*args, **kwargs))
        return loaded[-1]

    with mock.patch.object(generate, "load_class_conditional_pipeline", load_and_keep):
        argv = ["generate", "--label", "Sneaker", "--num-images", "2", "--steps", "4", "--output-dir", str(tmp_path)]
        assert main(argv) == 0
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    assert loaded[0].device.type == "cuda" and loaded[0].transformer.dtype == loaded[0].tokenizer.dtype == dtype
    assert "uniflow-hf generate: device cuda" in capsys.readouterr().err
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["Sneaker_0000.png", "Sneaker_0001.png", "Sneaker_grid.png"]


# -------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_train_tokenizer_with_bf16_mixed_precision(tmp_path, lora):
    from uniflow_hf.training import lora_config_for, train_tokenizer

    model = pretrained_tiny_model().eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = training_args(tmp_path, use_cpu=False, bf16=True, max_steps=3, save_strategy="steps", save_steps=3)
    trainer = train_tokenizer(model, synthetic_dataset(per_class=3), args, lora_config=lora_config_for(model) if lora else None)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert all("distillation_loss" in entry for entry in trainer.state.log_history if "loss" in entry)
    trained = trainer.model.merge_and_unload() if lora else trainer.model
    assert trained.device.type == "cuda"
    assert all(p.dtype == torch.float32 for p in trained.parameters())  # autocast: float32 master weights
    moved = [name for name, before_p in before.items() if not torch.equal(trained.get_parameter(name).detach().cpu(), before_p)]
    assert any(name.startswith("vision_model.") for name in moved) and any(name.startswith("flow_head.") for name in moved)
    if not lora:
        reloaded = UniFlowModel.from_pretrained(tmp_path)
        for name, parameter in reloaded.named_parameters():
            assert torch.equal(parameter, trained.get_parameter(name).detach().cpu())


def test_train_generator_with_bf16_mixed_precision(tmp_path):
    from diffusers import DiffusionPipeline

    from uniflow_hf.generator_training import GeneratorTrainingArguments, train_generator

    args = GeneratorTrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, transformer_kwargs=TINY_DIT, bf16=True,
        report_to="none", save_strategy="no", disable_tqdm=True,
    )
    result = train_generator(pretrained_tiny_model().eval(), synthetic_dataset(per_class=4), args)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert result.pipeline.transformer.dtype == torch.float32
    pipeline = DiffusionPipeline.from_pretrained(tmp_path).to("cuda")
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(["red", "vstripes"], num_inference_steps=2, generator=torch.Generator("cuda").manual_seed(0), output_type="np").images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()


# ---------------------------------------------------------------------------------------------------- LLaVA
def test_llava_with_uniflow_tower_in_bf16_on_cuda():
    from test_llava import IMAGE_TOKEN, build_tokenizer, images, uniflow_llava

    from uniflow_hf.llava import build_llava_processor

    tokenizer = build_tokenizer()
    model = uniflow_llava(tokenizer)
    processor = build_llava_processor(tokenizer, model.config.vision_config)
    batch = processor(images=images(2), text=[f"{IMAGE_TOKEN} what colour", f"{IMAGE_TOKEN} what colour"], return_tensors="pt")
    with torch.no_grad():
        reference = model(**batch).logits
        model = model.to("cuda", torch.bfloat16)
        batch = {k: v.to("cuda") for k, v in batch.items()}
        logits = model(**batch).logits
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert model.model.vision_tower.dtype == torch.bfloat16
    assert relative_error(logits.float(), reference) < 5e-2
    assert generated.shape == (2, batch["input_ids"].shape[1] + 3)


# ------------------------------------------------------------------- sharded training with the examples/ configs
def launch_train_tokenizer(tmp_path, name, *launcher, extra=()):
    """`accelerate launch [launcher] --num_processes 1 -m uniflow_hf.cli train-tokenizer` on 6 synthetic images for
    3 float32 steps (checkpoint at step 2); returns the output folder and the logged steps."""
    import json
    import os
    import subprocess
    import sys

    images = tmp_path / "images"
    if not images.is_dir():
        synthetic_dataset(per_class=2).save_to_disk(str(images))
        (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    output = tmp_path / name
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "1",
        "-m", "uniflow_hf.cli", "train-tokenizer", "--dataset", str(images), "--config", str(tmp_path / "config.json"),
        "--output-dir", str(output), "--max-steps", "3", "--save-steps", "2", "--per-device-train-batch-size", "2",
        "--logging-steps", "1", "--report-to", "none", "--seed", "0", "--disable-tqdm", "true", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    state = json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())
    return output, [entry for entry in state["log_history"] if "flow_loss" in entry]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return launch_train_tokenizer(tmp_path_factory.mktemp("sharded"), "plain")


@pytest.mark.parametrize(
    "name, launcher, extra",
    [
        ("fsdp2", ["--config_file", "examples/accelerate/fsdp2.yaml", "--mixed_precision", "no"], []),
        ("zero2", [], ["--deepspeed", "examples/deepspeed/zero2.json"]),
        ("zero3", ["--config_file", "examples/accelerate/deepspeed_zero3.yaml"], []),
    ],
)
def test_sharded_training_with_the_example_configs(plain_run, name, launcher, extra):
    """Accelerate's FSDP2 plugin and DeepSpeed ZeRO-2/3 train the tokenizer from the example configs: the first
    step's losses (before any update) equal the plain run's, so the logged values are neither doubled nor from
    another batch, and the final model, gathered from the shards, loads with a plain `from_pretrained`."""
    if name != "fsdp2":
        pytest.importorskip("deepspeed")
    plain_output, plain_logs = plain_run
    output, logs = launch_train_tokenizer(plain_output.parent, name, *launcher, extra=extra)
    assert [entry["step"] for entry in logs] == [entry["step"] for entry in plain_logs] == [1, 2]
    for key in ("loss", "flow_loss", "distillation_loss", "distill_cos/layer_01", "distill_w/layer_03"):
        assert logs[0][key] == pytest.approx(plain_logs[0][key], rel=1e-4), key
    sharded, plain = UniFlowModel.from_pretrained(output), UniFlowModel.from_pretrained(plain_output)
    initial = dict(UniFlowModel.from_pretrained(plain_output / "checkpoint-2").named_parameters())
    for (parameter_name, parameter), reference in zip(sharded.named_parameters(), plain.parameters()):
        assert parameter.shape == reference.shape and torch.isfinite(parameter).all(), parameter_name
    assert any(not torch.equal(p, initial[n]) for n, p in sharded.named_parameters())  # step 3 was saved
    pixel_values, noise = inputs()
    assert torch.isfinite(sharded.eval().reconstruct(pixel_values, noise=noise)).all()
