"""Checks of the paths the commands write, before any work, and the checkpoint a resume continues."""

from __future__ import annotations

import json
import os
import shutil

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import sort_checkpoints
from transformers.utils import logging


logger = logging.get_logger(__name__)


def check_output_dir(path: str | os.PathLike, option: str = "--output-dir") -> str:
    """The absolute `path`, once checked that a folder can be made and written there (creates nothing); `option`
    names the argument in errors."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{option} {path} is a file, not a folder: pass a folder path.")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(
            f"{option} {path} lies below {existing}, which is a file: no folder can be made there. Pass a path "
            "outside it."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: the folder {existing} is not writable.")
    return path


def checkpoint_incompleteness(folder: str, required_files: tuple[str, ...] = ()) -> str | None:
    """Why `folder` is not a completely written checkpoint (`trainer_state.json`, written last, then `required_files`),
    or None."""
    state_file = os.path.join(folder, TRAINER_STATE_NAME)
    if not os.path.isfile(state_file):
        return f"no {TRAINER_STATE_NAME}"
    try:
        with open(state_file, encoding="utf-8") as file:
            json.load(file)
    except (OSError, ValueError) as error:
        return f"unreadable {TRAINER_STATE_NAME} ({error})"
    missing = [name for name in required_files if not os.path.exists(os.path.join(folder, name))]
    return f"no {', '.join(missing)}" if missing else None


def last_complete_checkpoint(output_dir: str | os.PathLike, required_files: tuple[str, ...] = ()) -> str:
    """The last completely written checkpoint of `output_dir`, skipping (with a warning) later ones a killed run left
    half-written. Raises when there is none."""
    skipped = []
    for folder in reversed(sort_checkpoints(os.fspath(output_dir))):
        reason = checkpoint_incompleteness(folder, required_files)
        if reason is None:
            if skipped:
                logger.warning(
                    f"Resuming from {folder}: skipped the checkpoint(s) not completely written (a run killed while "
                    f"saving): {'; '.join(skipped)}."
                )
            else:
                logger.info(f"Resuming from {folder}.")
            return folder
        skipped.append(f"{os.path.basename(folder)} ({reason})")
    found = f" (only checkpoints not completely written: {'; '.join(skipped)})" if skipped else ""
    raise ValueError(f"No checkpoint to resume from in {output_dir}{found}.")


def check_training_output_dir(
    output_dir: str | os.PathLike, resume: bool = False, overwrite: bool | None = False
) -> str:
    """The absolute `output_dir`, checked writable and, unless the run resumes or overwrites, empty (`overwrite=None`:
    the command has no --overwrite-output-dir)."""
    output_dir = check_output_dir(output_dir)
    if resume or overwrite or not os.path.isdir(output_dir):
        return output_dir
    used = sorted(os.listdir(output_dir))
    if used:
        shown = ", ".join(used[:5]) + (f" and {len(used) - 5} more" if len(used) > 5 else "")
        overwrite_option = "" if overwrite is None else ", --overwrite-output-dir to train over it,"
        raise FileExistsError(
            f"--output-dir {output_dir} is not empty (it holds {shown}). Pass --resume-from-checkpoint true to "
            f"continue its last checkpoint{overwrite_option} or another --output-dir."
        )
    return output_dir


def remove_checkpoints(output_dir: str | os.PathLike) -> None:
    """Remove an earlier run's `checkpoint-*` folders (`--overwrite-output-dir`), which a resume would take for ours."""
    for folder in sort_checkpoints(os.fspath(output_dir)):
        logger.warning(f"--overwrite-output-dir: removing {folder} of the earlier run.")
        shutil.rmtree(folder)

