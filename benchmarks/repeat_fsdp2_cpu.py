"""Repeat a 2-process `accelerate launch --config_file examples/accelerate/fsdp2.yaml` run of `uniflow-hf
train-tokenizer` on CPU and record how each one ends: the exit status, the wall time, and whether a worker was
still alive at the time limit (a hang at exit). Tiny model, 4 images, 2 steps; nothing is downloaded.

    python benchmarks/repeat_fsdp2_cpu.py --runs 10 [--timeout 180] [--output fsdp2_runs.json]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = dict(
    image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    latent_channels=8, num_global_blocks=2, global_num_attention_heads=4, num_flow_head_blocks=2,
)  # fmt: skip


def write_images(folder: Path, count: int = 4) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{index}.png")


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (torchrun starts each worker in a session of its own, so a process group misses
    them)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    parent = int(file.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def signal_process(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def launch(images: Path, output_dir: Path, port: int, timeout: float) -> dict:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO_ROOT / "examples/accelerate/fsdp2.yaml"), "--num_processes", "2", "--mixed_precision", "no",
        "--main_process_port", str(port), "-m", "uniflow_hf.cli", "train-tokenizer", "--dataset", str(images),
        "--config", json.dumps(TINY_CONFIG), "--output_dir", str(output_dir), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    # PYTHONFAULTHANDLER: a worker aborted at the time limit prints the Python stack of each of its threads
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONFAULTHANDLER": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:  # abort the workers (their stacks are printed), then end the launcher
        workers = descendants(process.pid)
        for pid in workers:
            signal_process(pid, signal.SIGABRT)
        time.sleep(10)
        for pid in [*workers, process.pid]:
            signal_process(pid, signal.SIGKILL)
        output, _ = process.communicate()
        hung = True
    return {
        "returncode": process.returncode, "hung": hung, "seconds": round(time.perf_counter() - start, 1),
        "saved_model": (output_dir / "model.safetensors").is_file(), "tail": output[-6000 if hung else -1500 :],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a run counts as hung")
    parser.add_argument("--output", default=None, help="JSON file for the per-run results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        write_images(images)
        runs = []
        for index in range(args.runs):
            run = launch(images, Path(tmp) / f"run{index}", 29700 + index, args.timeout)
            runs.append(run)
            print(json.dumps({key: value for key, value in run.items() if key != "tail"}), flush=True)
            if run["returncode"] != 0 or run["hung"]:
                print(run["tail"], flush=True)
    summary = {
        "runs": len(runs), "succeeded": sum(r["returncode"] == 0 and not r["hung"] for r in runs),
        "hung": sum(r["hung"] for r in runs), "max_seconds": max(r["seconds"] for r in runs),
    }  # fmt: skip
    print(json.dumps(summary))
    if args.output:
        Path(args.output).write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
