"""Shared fixtures: tiny UniFlow models built in-process (nothing is downloaded)."""

import os
from pathlib import Path

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: threading overhead outweighs the second core

REPO_ROOT = Path(__file__).resolve().parents[1]
# Ground truth made with the official code: a copy of the project's shared fixtures (`../shared/fixtures` beside the
# repository, the authority), so that a plain clone runs the parity tests; `test_fixtures_match_the_shared_ones`
# checks the copy wherever the shared ones are beside it.
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "official"
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
OFFICIAL_TINY = FIXTURES / "official_uniflow_tiny"


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

TINY_CONFIG = dict(
    image_size=32,
    patch_size=8,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    latent_channels=8,
    num_global_blocks=2,
    global_num_attention_heads=4,
    num_flow_head_blocks=2,
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
