"""Multi-process generator training gives the result of one process holding the global batch.

`torchrun --nproc_per_node 2` (gloo on CPU, per-device batch 2, no `use_cpu`: the launch shards by itself) and one
process (batch 4) train the same DiT on the same 6 images for 3 steps and must end with the same losses and weights,
while one process at batch 2 does not.
That holds because the Trainer's seeded sampler orders the samples of every epoch whatever the launch, each process
reads its own part of every global batch, and `GeneratorTrainer.compute_loss` draws each sample's noise, flow time and
label dropout from (seed, step, sample index) alone. The first process encodes the latent cache, the second reads its
file, and the one-process runs then reuse it.

Run as a script (by the test, through torchrun):
`python tests/test_generator_distributed.py OUTPUT_DIR PER_DEVICE_BATCH`.
"""

import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import TINY_CONFIG, exit_torchrun_worker, run_torchrun


NUM_STEPS = 3
GLOBAL_BATCH = 4


def build_tokenizer():
    from uniflow_hf import UniFlowConfig, UniFlowModel

    torch.manual_seed(0)
    return UniFlowModel(UniFlowConfig(**TINY_CONFIG)).eval()


def generator_args(output_dir, **overrides):
    """3 SGD steps (a linear optimizer, so that the comparison measures the gradients, not Adam's normalisation)."""
    from test_generator_training import TINY_DIT

    from uniflow_hf.generator_training import GeneratorTrainingArguments

    values = dict(
        output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=0, max_steps=NUM_STEPS, optim="sgd", learning_rate=0.5, transformer_kwargs=TINY_DIT,
        latent_cache_dir=str(Path(output_dir).parent / "cache"),
    )
    return GeneratorTrainingArguments(**{**values, **overrides})


def train(output_dir, **overrides):
    from test_generator_training import synthetic_dataset

    from uniflow_hf.generator_training import train_generator

    return train_generator(build_tokenizer(), synthetic_dataset(per_class=2), generator_args(output_dir, **overrides))


def recording_read_samples():
    """Patch `GeneratorTrainer.compute_loss` to record [step, sample indices] of each micro-batch in `.read`."""
    from uniflow_hf.generator_training import GeneratorTrainer

    read, compute_loss = [], GeneratorTrainer.compute_loss

    def record(trainer, model, inputs, *args, **kwargs):
        read.append([trainer.state.global_step, inputs["index"].tolist()])
        return compute_loss(trainer, model, inputs, *args, **kwargs)

    patch = mock.patch.object(GeneratorTrainer, "compute_loss", autospec=True, side_effect=record)
    patch.read = read
    return patch


def weights(result) -> dict[str, torch.Tensor]:
    return {name: value.detach() for name, value in result.pipeline.transformer.state_dict().items()}


def test_two_processes_train_as_one_with_the_global_batch(tmp_path):
    torch.set_num_threads(1)
    run_torchrun(__file__, str(tmp_path / "ddp"), str(GLOBAL_BATCH // 2))
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert report["world_size"] == 2
    # a launch whose processes x accumulation do not divide the global batch is refused
    assert "`global_batch_size` 6 does not divide into 2 process(es) x 4 accumulation step(s)" in report["error"]
    read = [json.loads((tmp_path / "ddp" / f"read-{rank}.json").read_text()) for rank in range(2)]
    assert [step for step, _ in read[0]] == [step for step, _ in read[1]] == list(range(NUM_STEPS))
    # the main process encoded the latent cache, the other read it; the one-process runs below reuse it unencoded
    assert report["encoded"] == [6, 0]
    assert [path.suffix for path in (tmp_path / "cache").iterdir()] == [".arrow"]

    from uniflow_hf import UniFlowModel

    recording = recording_read_samples()
    with mock.patch.object(UniFlowModel, "encode", side_effect=AssertionError("encoded again")):
        with recording:
            single = train(tmp_path / "single", per_device_train_batch_size=GLOBAL_BATCH)
        half = train(tmp_path / "half", per_device_train_batch_size=GLOBAL_BATCH // 2)
    # each process read its own half of every global batch of the one-process run; an epoch is the 6 images padded
    # to 2 global batches with 2 repeated ones (rows 6 and 7), every row read once
    assert [indices for _, indices in recording.read] == [a + b for (_, a), (_, b) in zip(*read)]
    assert sorted(recording.read[0][1] + recording.read[1][1]) == list(range(8))
    from safetensors.torch import load_file

    distributed = load_file(tmp_path / "ddp" / "transformer" / "diffusion_pytorch_model.safetensors")
    expected, initial = weights(single), torch.load(tmp_path / "ddp" / "initial.pt", weights_only=True)
    assert distributed.keys() == expected.keys()
    assert max((expected[name] - initial[name]).abs().max().item() for name in expected) > 1e-2  # it trained
    for name, weight in expected.items():
        torch.testing.assert_close(distributed[name], weight, rtol=1e-5, atol=1e-6, msg=name)
    assert report["losses"] == pytest.approx(single.losses, rel=1e-5)
    # one process at the per-device batch alone is another run
    assert half.losses != pytest.approx(single.losses, rel=1e-3)
    assert max((weights(half)[name] - weight).abs().max().item() for name, weight in expected.items()) > 1e-3


def test_gradient_accumulation_trains_as_the_whole_batch(tmp_path):
    """`global_batch_size` 4 in 2 accumulation steps of 2 is batch 4 in one step; a global batch that does not divide
    into the accumulation steps, or disagrees with the per-device batch, is refused."""
    single = train(tmp_path / "single", per_device_train_batch_size=GLOBAL_BATCH)
    accumulated = train(tmp_path / "accumulated", global_batch_size=GLOBAL_BATCH, gradient_accumulation_steps=2)
    assert accumulated.losses == pytest.approx(single.losses, rel=1e-5)
    for name, weight in weights(single).items():
        torch.testing.assert_close(weights(accumulated)[name], weight, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match=r"`global_batch_size` 5 does not divide into 1 process\(es\) x 2"):
        train(tmp_path / "odd", global_batch_size=5, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="`per_device_train_batch_size` 3 disagrees with `global_batch_size` 4"):
        train(tmp_path / "both", global_batch_size=4, per_device_train_batch_size=3)


if __name__ == "__main__":  # one torchrun worker
    torch.set_num_threads(1)
    output_dir, per_device_batch = Path(sys.argv[1]), int(sys.argv[2])
    from uniflow_hf.generator_training import build_generator_transformer

    error = ""
    try:
        train(output_dir, global_batch_size=6, gradient_accumulation_steps=4, use_cpu=False)
    except ValueError as caught:
        error = str(caught)
    from uniflow_hf import UniFlowModel

    encode = mock.patch.object(UniFlowModel, "encode", autospec=True, side_effect=UniFlowModel.encode)
    recording = recording_read_samples()
    with recording, encode as spy:
        result = train(output_dir, per_device_train_batch_size=per_device_batch, use_cpu=False)  # no flag: shards
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    encoded = torch.tensor([sum(len(call.args[1]) for call in spy.call_args_list)])  # images each process encoded
    gathered = [torch.zeros_like(encoded) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, encoded)
    (output_dir / f"read-{rank}.json").write_text(json.dumps(recording.read))
    if rank == 0:
        torch.manual_seed(0)  # the DiT every process started from
        initial = build_generator_transformer(build_tokenizer(), 3, **generator_args(output_dir).transformer_kwargs)
        torch.save(initial.state_dict(), output_dir / "initial.pt")
        report = {"world_size": world_size, "losses": result.losses, "error": error}
        report["encoded"] = [int(count) for count in gathered]
        (output_dir / "report.json").write_text(json.dumps(report))
    exit_torchrun_worker()
