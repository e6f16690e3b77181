"""Data-parallel training gives the result of one process holding the global batch.

`torchrun --nproc_per_node 2` (gloo on CPU, per-device batch 2) and one process (batch 4) train the same model on
the same 4 images for 3 steps and must end with the same weights. That holds because every random draw of a
sample (augmentation, flow noise, timesteps) is keyed by (seed, epoch, sample index) in `UniFlowTrainingDataset`,
the distillation teacher is the same starting encoder in every process, the adaptive layer weights use α averaged
over the processes, and `drop_path_rate` is 0. The student starts away from its teacher with a large β, so that
per-process layer weights would visibly differ.

Run as a script (by the test, through torchrun): `python tests/test_distributed.py OUTPUT_DIR PER_DEVICE_BATCH`.
"""

import json
import sys
from pathlib import Path

import torch
from conftest import TINY_CONFIG, exit_torchrun_worker, run_torchrun, training_args


NUM_STEPS = 3
GLOBAL_BATCH = 4


def build_model():
    """The same model in every process: a student drifted from its teacher, the flow head's zero-initialised
    layers woken up."""
    from uniflow_hf import UniFlowConfig, UniFlowModel

    torch.manual_seed(0)
    model = UniFlowModel(UniFlowConfig(**TINY_CONFIG, drop_path_rate=0.0, distillation_beta=20.0))
    model.enable_distillation()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in [*model.vision_model.parameters(), *model.flow_head.parameters()]:
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def build_dataset():
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(GLOBAL_BATCH)]
    return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())


def train(output_dir, per_device_batch):
    """3 SGD steps (a linear optimizer, so that the comparison measures the gradients, not Adam's normalisation)."""
    from uniflow_hf.training import train_tokenizer

    args = training_args(
        output_dir, per_device_train_batch_size=per_device_batch, max_steps=NUM_STEPS, optim="sgd",
        learning_rate=0.2, lr_scheduler_type="constant",
    )
    return train_tokenizer(build_model(), build_dataset(), args, save_model=False)


def test_two_processes_reach_the_weights_of_one(tmp_path):
    torch.set_num_threads(1)
    run_torchrun(__file__, str(tmp_path / "ddp"), str(GLOBAL_BATCH // 2))
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert report["world_size"] == 2

    trainer = train(tmp_path / "single", per_device_batch=GLOBAL_BATCH)
    single = {name: parameter.detach() for name, parameter in trainer.model.named_parameters()}
    from safetensors.torch import load_file

    distributed = load_file(tmp_path / "ddp" / "weights.safetensors")
    initial = dict(build_model().named_parameters())
    assert distributed.keys() == single.keys()
    moved = max((single[name] - initial[name]).abs().max().item() for name in single)
    assert moved > 1e-2  # the 3 steps did change the weights
    for name, weight in single.items():
        torch.testing.assert_close(distributed[name], weight, rtol=1e-4, atol=1e-6, msg=name)

    # the logged (process-averaged) losses and layer weights agree step by step, and the layer weights vary
    steps = [entry for entry in trainer.state.log_history if "flow_loss" in entry]
    assert len(steps) == len(report["log_history"]) == NUM_STEPS
    for expected, got in zip(steps, report["log_history"]):
        for key in ("loss", "flow_loss", "distillation_loss", "distill_w/layer_01", "distill_w/layer_03"):
            assert abs(got[key] - expected[key]) <= 1e-5 * abs(expected[key]) + 1e-7, (key, got, expected)
    assert steps[0]["distill_w/layer_03"] != steps[0]["distill_w/layer_01"] * 3


if __name__ == "__main__":  # one torchrun worker
    torch.set_num_threads(1)
    output_dir, per_device_batch = Path(sys.argv[1]), int(sys.argv[2])
    trainer = train(output_dir, per_device_batch)
    if trainer.is_world_process_zero():
        from safetensors.torch import save_file

        weights = {name: parameter.detach().contiguous() for name, parameter in trainer.model.named_parameters()}
        save_file(weights, output_dir / "weights.safetensors")
        history = [entry for entry in trainer.state.log_history if "flow_loss" in entry]
        report = {"world_size": trainer.args.world_size, "log_history": history}
        (output_dir / "report.json").write_text(json.dumps(report))
    exit_torchrun_worker()
