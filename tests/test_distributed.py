"""Data-parallel training gives the result of one process holding the global batch.

`torchrun --nproc_per_node 2` (gloo on CPU, per-device batch 2, `TrainingArguments` without `use_cpu`: a launch on a
machine without an accelerator shards by itself) and one process (batch 4) train the same model on
the same 4 images for 3 steps and must end with the same weights. That holds because every random draw of a
sample (augmentation in the dataset, flow noise and timesteps in the training step) is keyed by (seed, epoch, sample
index) (by the position in the stream in `UniFlowIterableTrainingDataset`, whose processes read their own part), the
distillation teacher is the same starting encoder in every process, the adaptive layer weights use α averaged
over the processes, and `drop_path_rate` is 0. The student starts away from its teacher with a large β, so that
per-process layer weights would visibly differ.

Run as a script (by the tests, through one torchrun launch shared by all of them): `python tests/test_distributed.py
OUTPUT_DIR`, each worker running `log_worker` and then `train_worker` for each kind of data.
"""

import json
import sys
from pathlib import Path

import pytest
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


def train(output_dir, per_device_batch, data="map_style", use_cpu=True):
    """3 SGD steps (a linear optimizer, so that the comparison measures the gradients, not Adam's normalisation) on
    the images as `data`: "map_style"; "stream", a one-shard `datasets.IterableDataset`, which 2 processes split
    example by example (process r reads samples r, r + 2...: each global batch is the single process's batch);
    "stream_shards", two shards, one per process (process r reads shard r, its i-th sample at position 2i + r, so
    shards [0, 1] and [2, 3] interleave as images 0, 2, 1, 3); "interleaved", the map-style images in that order."""
    from uniflow_hf.training import train_tokenizer

    args = training_args(
        output_dir, per_device_train_batch_size=per_device_batch, max_steps=NUM_STEPS, optim="sgd",
        learning_rate=0.2, lr_scheduler_type="constant", use_cpu=use_cpu,
    )
    dataset = build_dataset().select([0, 2, 1, 3]) if data == "interleaved" else build_dataset()
    if data.startswith("stream"):
        dataset = dataset.to_iterable_dataset(num_shards=2 if data == "stream_shards" else 1)
    return train_tokenizer(build_model(), dataset, args, save_model=False)


DATA = ["map_style", "stream", "stream_shards"]


@pytest.fixture(scope="module")
def torchrun_output(tmp_path_factory):
    """The folder of one `torchrun --nproc_per_node 2` launch of this file's workers (~20 s each launch costs)."""
    output_dir = tmp_path_factory.mktemp("torchrun")
    run_torchrun(__file__, output_dir)
    return output_dir


@pytest.mark.parametrize("data", DATA)
def test_two_processes_reach_the_weights_of_one(torchrun_output, tmp_path, data):
    torch.set_num_threads(1)
    report = json.loads((torchrun_output / data / "report.json").read_text())
    assert report["world_size"] == 2

    trainer = train(tmp_path / "single", GLOBAL_BATCH, "interleaved" if data == "stream_shards" else "map_style")
    single = {name: parameter.detach() for name, parameter in trainer.model.named_parameters()}
    from safetensors.torch import load_file

    distributed = load_file(torchrun_output / data / "weights.safetensors")
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


def test_logs_average_over_the_processes(torchrun_output):
    """The logged loss parts are means over the processes (Accelerate's reduction): each process adds its own
    values; both must log their mean."""
    logs = [json.loads((torchrun_output / f"log{rank}.json").read_text()) for rank in range(2)]
    for log in logs:
        assert log["flow_loss"] == 1.5 and log["distill_cos/layer_01"] == 0.25 and log["loss"] == 0.0


def train_worker(output_dir, data):
    trainer = train(output_dir, GLOBAL_BATCH // 2, data, use_cpu=False)  # no flag: a CPU launch shards by itself
    if trainer.is_world_process_zero():
        from safetensors.torch import save_file

        output_dir.mkdir(parents=True, exist_ok=True)
        weights = {name: parameter.detach().contiguous() for name, parameter in trainer.model.named_parameters()}
        save_file(weights, output_dir / "weights.safetensors")
        history = [entry for entry in trainer.state.log_history if "flow_loss" in entry]
        report = {"world_size": trainer.args.world_size, "log_history": history}
        (output_dir / "report.json").write_text(json.dumps(report))


def log_worker(output_dir):
    from accelerate.state import AcceleratorState

    from uniflow_hf.training import UniFlowTrainer

    trainer = UniFlowTrainer(model=build_model(), args=training_args(output_dir))
    rank = torch.distributed.get_rank()
    parts = {"flow_loss": [torch.tensor(1.0 + rank)], "distill_cos/layer_01": [torch.tensor(0.5 * rank)]}
    trainer._loss_parts[True] = parts
    trainer.log({"loss": 0.0})
    (output_dir / f"log{rank}.json").write_text(json.dumps(trainer.state.log_history[-1]))
    AcceleratorState._reset_state(reset_partial_state=True)  # the training below sets its own state up


if __name__ == "__main__":  # one torchrun worker
    torch.set_num_threads(1)
    output_dir = Path(sys.argv[1])
    log_worker(output_dir)
    for data in DATA:
        train_worker(output_dir / data, data)
    exit_torchrun_worker()
