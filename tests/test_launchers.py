"""Launches on a machine without an accelerator: several processes shard (tests/test_distributed.py and
tests/test_generator_distributed.py launch torchrun without `use_cpu`); the launches that cannot shard are refused
before any work, with the launch to use instead. The launcher's environment is mocked here: no process is started."""

import os
from pathlib import Path
from unittest import mock

import pytest

from uniflow_hf.cli import main as cli_main
from uniflow_hf.training import check_cpu_launch, cpu_processes_need_use_cpu


REPO_ROOT = Path(__file__).resolve().parents[1]

# what `accelerate launch --cpu --num_processes 2` gives its single process (accelerate/utils/launch.py)
ACCELERATE_CPU_ENV = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PMI_SIZE", "ACCELERATE_USE_DEEPSPEED", *ACCELERATE_CPU_ENV)


def launcher_env(**values):
    """`os.environ` with only the given launcher variables set."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCH_VARIABLES}
    return mock.patch.dict(os.environ, {**env, **values}, clear=True)


def no_accelerator(available=False):
    return mock.patch("torch.accelerator.is_available", return_value=available)


def test_several_cpu_processes_get_use_cpu_and_accelerators_do_not():
    with no_accelerator(), launcher_env(WORLD_SIZE="2"):
        assert cpu_processes_need_use_cpu()
    with no_accelerator(available=True), launcher_env(WORLD_SIZE="2"):
        assert not cpu_processes_need_use_cpu()
    with no_accelerator(), launcher_env():
        assert not cpu_processes_need_use_cpu()  # one process: nothing to shard


def training_command(tmp_path, *extra):
    return ["train-tokenizer", "--dataset", str(tmp_path / "images"), "--output-dir", str(tmp_path / "run"),
            "--config", "{}", "--report-to", "none", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "env, extra, message",
    [
        (ACCELERATE_CPU_ENV, [], "`accelerate launch --cpu --num_processes N` started this single process"),
        ({}, ["--deepspeed", str(REPO_ROOT / "examples/deepspeed/zero2.json")], "DeepSpeed (--deepspeed, or an accel"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "1"}, [], "this machine has none and DeepSpeed"),
    ],
)
def test_launches_that_cannot_shard_are_refused_before_any_work(tmp_path, capsys, env, extra, message):
    dataset = mock.patch("uniflow_hf.data.load_image_dataset", side_effect=AssertionError("the dataset was read"))
    with no_accelerator(), launcher_env(**env), dataset:
        assert cli_main(training_command(tmp_path, *extra)) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "torchrun --nproc_per_node N" in error  # the launch that works
    assert not (tmp_path / "run").exists()


def test_single_process_launches_pass():
    with no_accelerator(), launcher_env(ACCELERATE_USE_CPU="True"):  # `accelerate launch --cpu`, one process
        check_cpu_launch()
    with no_accelerator(available=True), launcher_env(**ACCELERATE_CPU_ENV, ACCELERATE_USE_DEEPSPEED="true"):
        check_cpu_launch()  # on GPUs these are Accelerate's to run
