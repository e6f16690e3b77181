"""Shared fixtures: tiny UniFlow models built in-process (nothing is downloaded)."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
# remote-code loads (`trust_remote_code=True`) copy the saved code into a modules cache: one of this process's own,
# removed at exit, so that the tests neither write the user's cache nor share one between parallel workers
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="uniflow-hf-tests-modules-")
atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)
torch.set_num_threads(1)  # tiny models: threading overhead outweighs the second core

REPO_ROOT = Path(__file__).resolve().parents[1]
# Ground truth made with the official code: a copy of the project's shared fixtures (`../shared/fixtures` beside the
# repository, the authority), so that a plain clone runs the parity tests; `test_fixtures_match_the_shared_ones`
# checks the copy wherever the shared ones are beside it.
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "official"
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
OFFICIAL_TINY = FIXTURES / "official_uniflow_tiny"


def pytest_addoption(parser):
    parser.addoption(
        "--cpu-flags", default=None, metavar="FLAGS",
        help='run the whole suite as on a CPU with exactly these /proc/cpuinfo flags, e.g. "amx_bf16 avx512_bf16" '
        "(what `--dtype auto` sees, in this process and the ones the tests start)",
    )


def pytest_configure(config):
    """`--cpu-flags`: point `uniflow_hf.hardware` at a fake cpuinfo, through the `UNIFLOW_HF_CPUINFO` override that
    subprocesses inherit."""
    flags = config.getoption("--cpu-flags")
    if flags is None:
        return
    import sys
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="uniflow-hf-cpuinfo-")) / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Fake CPU (pytest --cpu-flags)\nflags\t\t: {flags}\n")
    os.environ["UNIFLOW_HF_CPUINFO"] = str(path)
    if "uniflow_hf.hardware" in sys.modules:  # imported before this hook (e.g. by a plugin)
        sys.modules["uniflow_hf.hardware"].CPUINFO_PATH = str(path)


def pytest_report_header(config):
    flags = config.getoption("--cpu-flags")
    return None if flags is None else f"uniflow-hf: CPU flags mocked to {flags!r} (UNIFLOW_HF_CPUINFO)"


def run_torchrun(script, *args, nproc_per_node: int = 2, timeout: int = 300):
    """`torchrun --nproc_per_node N script args...` on this machine's CPU (gloo over loopback, one thread per
    process), importing this checkout's `uniflow_hf`; fails the test with the end of its output unless every process
    succeeds."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc_per_node),
        "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), *map(str, args),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def exit_torchrun_worker():
    """End a torchrun worker of `run_torchrun` once its work is written: wait for the others, close the process
    group, and skip the interpreter's teardown, which a thread left by the c10d/gloo stack sometimes aborts
    ("terminate called without an active exception")."""
    import sys

    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def training_args(output_dir, **overrides):
    """CPU `TrainingArguments` for the tiny training tests: quiet, no saving, every step logged."""
    from transformers import TrainingArguments

    values = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    return TrainingArguments(**{**values, **overrides})

# encoder, then latent and decoder sizes
TINY_CONFIG = dict(
    image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    latent_channels=8, num_global_blocks=2, global_num_attention_heads=4, num_flow_head_blocks=2,
)


def pretrained_tiny_model(seed=0):
    """A tiny model whose zero-initialised flow-head layers (adaLN gates, output layer) hold weights, as after
    pretraining: its decoder's velocity is not zero, so adapters and precision changes have something to change."""
    from uniflow_hf import UniFlowConfig, UniFlowModel

    torch.manual_seed(seed)
    model = UniFlowModel(UniFlowConfig(**TINY_CONFIG))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.flow_head.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture
def tiny_config():
    from uniflow_hf import UniFlowConfig

    return UniFlowConfig(**TINY_CONFIG)


@pytest.fixture
def tiny_model(tiny_config):
    from uniflow_hf import UniFlowModel

    torch.manual_seed(0)
    return UniFlowModel(tiny_config).eval()


@pytest.fixture
def official_tiny_dir():
    if not OFFICIAL_TINY.is_dir():
        pytest.fail(f"Missing ground-truth fixtures at {OFFICIAL_TINY} (a copy of ../shared/fixtures).")
    return OFFICIAL_TINY


# ------------------------------------------------------------------------ tiny pipelines (pipelines, conversion, CLI)
ID2LABEL = {0: "circle", 1: "square", 2: "stripes"}


@pytest.fixture
def reconstruction_pipeline(tiny_model):
    from uniflow_hf import UniFlowReconstructionPipeline

    pipeline = UniFlowReconstructionPipeline(tokenizer=tiny_model)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def tiny_transformer(config, num_classes=3, seed=0):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        num_layers=1,
        sample_size=config.grid_size,
        patch_size=1,
        num_embeds_ada_norm=num_classes,
    ).eval()


@pytest.fixture
def class_conditional_pipeline():
    """A tiny pipeline whose decoder's output depends on the latents (its flow head holds weights)."""
    from uniflow_hf import UniFlowClassConditionalPipeline, UniFlowFlowMatchScheduler

    tokenizer = pretrained_tiny_model().eval()
    channels = tokenizer.config.latent_channels
    pipeline = UniFlowClassConditionalPipeline(
        transformer=tiny_transformer(tokenizer.config),
        scheduler=UniFlowFlowMatchScheduler(),
        tokenizer=tokenizer,
        id2label=ID2LABEL,
        latent_mean=torch.linspace(-0.5, 0.5, channels),
        latent_std=torch.linspace(0.5, 2.0, channels),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def autoguided_pipeline(class_conditional_pipeline):
    """The tiny pipeline with another tiny DiT (other weights) as its autoguidance guide, guiding by default."""
    from uniflow_hf import UniFlowClassConditionalPipeline

    pipeline = class_conditional_pipeline
    guide = tiny_transformer(pipeline.tokenizer.config, seed=1)
    settings = {key: pipeline.config[key] for key in ("id2label", "latent_mean", "latent_std")}
    pipeline = UniFlowClassConditionalPipeline(
        **{**pipeline.components, "guide_transformer": guide}, **settings, autoguidance_scale=2.0,
        autoguidance_interval=(0.5, 1.0),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def random_images(count, seed=0, size=(40, 36)):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(count)]


def generators(seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]

