"""Faults and refusals of the training commands: each is found before any work and loses nothing.

- a run killed (SIGKILL) while it writes a checkpoint, resumed with `--resume-from-checkpoint true`, skips that
  half-written checkpoint, continues from the last complete one and ends at the weights of an unbroken run;
- a rerun into a used output folder is refused (unless resuming or `--overwrite-output-dir`) and leaves the folder
  byte-identical;
- nonsense numbers (negative `--max-steps`, zero batch size, zero heads), a corrupt image (named) and an output path
  below a regular file are refused before the model is built or any image is read.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import REPO_ROOT, TINY_CONFIG
from safetensors.torch import load_file

from uniflow_hf import UniFlowConfig
from uniflow_hf.cli import main as cli_main
from uniflow_hf.io import (
    check_output_dir,
    check_training_output_dir,
    checkpoint_incompleteness,
    last_complete_checkpoint,
)


def write_image_folder(folder: Path, count: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def tokenizer_command(images: Path, output_dir: Path, *extra: str) -> list[str]:
    """A tiny float32 `train-tokenizer` run on CPU: 4 SGD steps at batch 2, a checkpoint every 2 steps."""
    return [
        "train-tokenizer", "--dataset", str(images), "--config", json.dumps(TINY_CONFIG), "--output-dir",
        str(output_dir), "--use-cpu", "--report-to", "none", "--disable-tqdm", "true", "--optim", "sgd",
        "--learning-rate", "0.1", "--per-device-train-batch-size", "2", "--max-steps", "4", "--save-steps", "2",
        "--logging-steps", "1", *extra,
    ]  # fmt: skip


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256 of its bytes)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


KILL_WHILE_SAVING = """
import os, signal, sys
from transformers import TrainerState
save_to_json = TrainerState.save_to_json
def save_then_die(state, path):  # the Trainer writes trainer_state.json last: die just before, at checkpoint-4
    if os.path.basename(os.path.dirname(path)) == "checkpoint-4":
        os.kill(os.getpid(), signal.SIGKILL)
    save_to_json(state, path)
TrainerState.save_to_json = save_then_die
from uniflow_hf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_a_kill_while_checkpointing_ends_at_the_unbroken_run(tmp_path, caplog):
    images = write_image_folder(tmp_path / "images")
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", KILL_WHILE_SAVING, *tokenizer_command(images, killed)], env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == -9, run.stderr[-3000:]
    # what the kill left: checkpoint-4 holds the weights and optimizer, not trainer_state.json
    assert (killed / "checkpoint-4" / "model.safetensors").is_file()
    assert checkpoint_incompleteness(str(killed / "checkpoint-4")) == "no trainer_state.json"
    assert checkpoint_incompleteness(str(killed / "checkpoint-2")) is None

    torch.set_num_threads(1)
    assert cli_main(tokenizer_command(images, killed, "--resume-from-checkpoint", "true")) == 0
    assert "skipped the checkpoint(s) not completely written" in caplog.text and "checkpoint-4 (no trainer_state.json)" in caplog.text
    assert cli_main(tokenizer_command(images, tmp_path / "unbroken")) == 0
    resumed = load_file(killed / "model.safetensors")
    unbroken = load_file(tmp_path / "unbroken" / "model.safetensors")
    initial = load_file(killed / "checkpoint-2" / "model.safetensors")
    assert resumed.keys() == unbroken.keys()
    assert max((unbroken[name] - initial[name]).abs().max().item() for name in unbroken) > 1e-4  # steps 3-4 trained
    for name, weight in unbroken.items():
        torch.testing.assert_close(resumed[name], weight, rtol=1e-5, atol=1e-6, msg=name)
    state = json.loads((killed / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_resume_needs_a_complete_checkpoint(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text('{"global_st')  # cut short
    with pytest.raises(ValueError, match=r"checkpoint-3 \(unreadable trainer_state.json"):
        last_complete_checkpoint(tmp_path)
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")
    with pytest.raises(ValueError, match=r"checkpoint-1 \(no ema.pt\)"):
        last_complete_checkpoint(tmp_path, required_files=("ema.pt",))  # the generator's EMA, saved after the state


def nothing_may_start():
    """Patches that fail the test if a command gets to read its dataset or build its model."""
    return (
        mock.patch("uniflow_hf.data.load_image_dataset", side_effect=AssertionError("the dataset was read")),
        mock.patch("uniflow_hf.commands.train.build_model", side_effect=AssertionError("the model was built")),
    )


def test_a_used_output_folder_is_refused_and_left_byte_identical(tmp_path, capsys):
    images = write_image_folder(tmp_path / "images")
    output = tmp_path / "run"
    torch.set_num_threads(1)
    assert cli_main(tokenizer_command(images, output, "--max-steps", "2")) == 0
    before = folder_digest(output)
    assert "model.safetensors" in before and "checkpoint-2/trainer_state.json" in before
    capsys.readouterr()
    read_dataset, build = nothing_may_start()
    with read_dataset, build:
        assert cli_main(tokenizer_command(images, output, "--max-steps", "2")) == 2
        error = capsys.readouterr().err
        assert f"--output-dir {output} is not empty (it holds " in error and "checkpoint-2, config.json" in error
        assert "--resume-from-checkpoint true" in error and "--overwrite-output-dir" in error
        assert cli_main(["train-generator", "--tokenizer", str(output), "--dataset", str(images), "--output-dir",
                         str(output), "--use-cpu", "--report-to", "none"]) == 2  # fmt: skip
        assert "is not empty" in capsys.readouterr().err
    assert folder_digest(output) == before
    # --overwrite-output-dir trains over it; the earlier run's checkpoints go
    assert cli_main(tokenizer_command(images, output, "--max-steps", "1", "--save-steps", "5", "--overwrite-output-dir")) == 0
    assert not (output / "checkpoint-2").exists()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 1


def test_the_refusal_names_only_the_options_the_command_has(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileExistsError) as refusal:
        check_training_output_dir(tmp_path, overwrite=None)  # e.g. `fmnist train-generator`: no overwrite option
    assert "Pass --resume-from-checkpoint true to continue its last checkpoint or another" in str(refusal.value)
    assert check_training_output_dir(tmp_path, resume=True) == check_training_output_dir(tmp_path, overwrite=True)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--max-steps", "-5"], r"--max-steps must be a positive number of steps, or -1 to train --num-train-epochs; got -5"),
        (["--max-steps", "0"], "--max-steps must be a positive number of steps"),
        (["--per-device-train-batch-size", "0"], "--per-device-train-batch-size must be a positive integer, got 0"),
        (["--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps must be a positive integer"),
        (["--max-steps", "-1", "--num-train-epochs", "0"], r"--num-train-epochs must be > 0"),
    ],
)
def test_nonsense_numbers_are_refused_before_any_work(tmp_path, capsys, arguments, message):
    read_dataset, build = nothing_may_start()
    with read_dataset, build:
        assert cli_main(tokenizer_command(tmp_path / "images", tmp_path / "run", *arguments)) == 2
        assert message in capsys.readouterr().err
        generator = ["train-generator", "--tokenizer", "t", "--dataset", "d", "--output-dir", str(tmp_path / "gen"),
                     "--use-cpu", "--report-to", "none", *arguments]  # fmt: skip
        assert cli_main(generator) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "gen").exists()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_attention_heads": 0}, "`num_attention_heads` must be a positive integer, got 0"),
        ({"global_num_attention_heads": 0}, "`global_num_attention_heads` must be a positive integer, got 0"),
        ({"hidden_size": 62}, r"`hidden_size` \(62\) must be divisible by `num_attention_heads` \(4\)"),
    ],
)
def test_config_refuses_head_counts_that_do_not_divide(fields, message):
    with pytest.raises(ValueError, match=message):
        UniFlowConfig(**{**TINY_CONFIG, **fields})


def test_a_corrupt_image_is_named_before_training_or_skipped(tmp_path, capsys, caplog):
    images = write_image_folder(tmp_path / "images")
    (tmp_path / "images" / "2.png").write_bytes((tmp_path / "images" / "2.png").read_bytes()[:200])  # truncated
    build = mock.patch("uniflow_hf.commands.train.build_model", side_effect=AssertionError("the model was built"))
    tokenizer = mock.patch("uniflow_hf.commands.generate.load_reconstruction_pipeline", side_effect=AssertionError("loaded"))
    with build, tokenizer:
        assert cli_main(tokenizer_command(images, tmp_path / "run")) == 2
        error = capsys.readouterr().err
        assert f"1 of 4 images cannot be read: {images / '2.png'} (" in error and "--skip-unreadable" in error
        generator = ["train-generator", "--tokenizer", "t", "--dataset", str(images), "--output-dir",
                     str(tmp_path / "gen"), "--use-cpu", "--report-to", "none"]  # fmt: skip
        assert cli_main(generator) == 2
        assert f"{images / '2.png'}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "gen").exists()

    torch.set_num_threads(1)
    assert cli_main(tokenizer_command(images, tmp_path / "run", "--max-steps", "1", "--skip-unreadable")) == 0
    assert f"Skipping 1 unreadable image(s): {images / '2.png'}" in caplog.text


def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "afile.txt"
    a_file.write_text("not a folder")
    read_dataset, build = nothing_may_start()
    with read_dataset, build:
        assert cli_main(tokenizer_command(tmp_path / "images", a_file / "run")) == 2
        assert f"--output-dir {a_file / 'run'} lies below {a_file}, which is a file" in capsys.readouterr().err
        assert cli_main(tokenizer_command(tmp_path / "images", a_file)) == 2
        assert f"--output-dir {a_file} is a file, not a folder" in capsys.readouterr().err
        generator = ["train-generator", "--tokenizer", "t", "--dataset", "d", "--output-dir", str(tmp_path / "gen"),
                     "--latent-cache-dir", str(a_file / "cache"), "--use-cpu", "--report-to", "none"]  # fmt: skip
        assert cli_main(generator) == 2
        assert f"--latent-cache-dir {a_file / 'cache'} lies below {a_file}" in capsys.readouterr().err
    assert a_file.read_text() == "not a folder"
    with mock.patch("os.access", return_value=False):  # an unwritable folder (the tests may run as root)
        with pytest.raises(PermissionError, match=f"the folder {tmp_path} is not writable"):
            check_output_dir(tmp_path / "new" / "run")
    assert check_output_dir(tmp_path / "new" / "run") == str(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_the_latent_cache_names_an_unreadable_image_before_encoding(tmp_path):
    import datasets
    from test_generator_distributed import build_tokenizer, generator_args

    from uniflow_hf.data import UnreadableImagesError
    from uniflow_hf.generator_training import train_generator

    images = write_image_folder(tmp_path / "images", 2)
    rows = [{"bytes": (images / "0.png").read_bytes(), "path": None}, {"bytes": b"not an image", "path": None}]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    dataset = datasets.Dataset.from_dict({"image": rows, "label": [0, 1]}, features=features)
    with pytest.raises(UnreadableImagesError, match=r"1 of 2 images cannot be read: row 1 \(UnidentifiedImageError"):
        train_generator(build_tokenizer(), dataset, generator_args(tmp_path / "gen"))
    assert not (tmp_path / "cache").exists()
