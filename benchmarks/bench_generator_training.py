"""Generator training (`train_generator`) on 1 and 2 processes: training samples per second, and the memory each
process spends on the latent cache.

Each setting runs `torchrun --nproc_per_node N` on this script (CPU, gloo, one thread per process), which trains the
default-size DiT on a small random tokenizer's latents of random labelled images: `--warmup` steps, then `--steps`
timed steps at `--per-device-batch` samples per process (so N processes train N times the samples per step). After
training, each process opens the latent cache again, reads every row, and reports how its resident memory grew: its
own (anonymous) memory, and the file pages of the memory-mapped Arrow files (the page cache, shared by the processes
of a machine and reclaimable); then, for comparison, how much its own memory grows when it holds all the latents as
one tensor, as the training did before the cache.

    python benchmarks/bench_generator_training.py [--processes 1 2] [--images 2048] [--steps 20] [--warmup 3] \
        [--per-device-batch 32]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
# a tokenizer whose latents are 8x8 tokens of 16 channels (4 KiB per image in float32)
TOKENIZER_CONFIG = dict(
    image_size=64, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    latent_channels=16, num_global_blocks=1, global_num_attention_heads=4, num_flow_head_blocks=1,
)
NUM_CLASSES = 10


def build_inputs(num_images: int):
    import datasets
    import numpy as np
    import torch

    from uniflow_hf import UniFlowConfig, UniFlowModel

    torch.manual_seed(0)
    tokenizer = UniFlowModel(UniFlowConfig(**TOKENIZER_CONFIG)).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_images, 64, 64, 3), dtype=np.uint8)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=NUM_CLASSES)})
    labels = rng.integers(0, NUM_CLASSES, num_images).tolist()
    return tokenizer, datasets.Dataset.from_dict({"image": list(images), "label": labels}, features=features)


def memory_mib() -> dict[str, float]:
    """This process's resident anonymous memory (its own heap: what a tensor of latents takes) and resident
    file-backed memory (memory-mapped files: page cache, shared between processes and reclaimable), in MiB."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so that the figures are what is live
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("RssAnon", "RssFile")}


def worker(output_dir: Path, args) -> None:
    import torch
    from transformers import TrainerCallback

    from uniflow_hf.generator_training import GeneratorTrainingArguments, build_latent_cache, train_generator

    torch.set_num_threads(1)
    tokenizer, dataset = build_inputs(args.images)

    class Clock(TrainerCallback):
        def on_step_end(self, training_args, state, control, **kwargs):
            if state.global_step == args.warmup:
                self.start = time.perf_counter()

        def on_train_end(self, training_args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    training_args = GeneratorTrainingArguments(
        output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, max_steps=args.warmup + args.steps, per_device_train_batch_size=args.per_device_batch,
        encode_batch_size=256,
    )
    started = time.perf_counter()
    train_generator(tokenizer, dataset, training_args, callbacks=[clock], save_pipeline=False)
    total_seconds = time.perf_counter() - started
    world_size = training_args.world_size

    latents = build_latent_cache(tokenizer, dataset, training_args)  # reused: no encoding
    before = memory_mib()
    for start in range(0, len(latents), 1024):
        latents[start : start + 1024]["latents"].sum()  # read every row from the memory-mapped files
    read = memory_mib()
    in_memory = latents[:]["latents"].clone()  # the latents as one tensor of its own, as before the cache
    held = memory_mib()
    cache_mib = sum(f.stat().st_size for f in (output_dir / "latent_cache").glob("*.arrow")) / 2**20
    row = {
        "processes": world_size,
        "rank": training_args.process_index,
        "samples_per_second": world_size * args.per_device_batch * args.steps / clock.seconds,
        "run_seconds_with_encoding": total_seconds,
        "cache_mib_on_disk": cache_mib,
        "cache_read_anon_mib": read["RssAnon"] - before["RssAnon"],
        "cache_read_file_mib": read["RssFile"] - before["RssFile"],
        "tensor_anon_mib": held["RssAnon"] - read["RssAnon"],
        "tensor_mib": in_memory.numel() * 4 / 2**20,
    }
    (output_dir / f"rank{training_args.process_index}.json").write_text(json.dumps(row))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--per-device-batch", type=int, default=32)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(Path(args.worker), args)
        return

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])  # this checkout's uniflow_hf
    options = ["--images", str(args.images), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    options += ["--per-device-batch", str(args.per_device_batch)]
    for processes in args.processes:
        with tempfile.TemporaryDirectory() as folder:
            command = [
                sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                __file__, *options, "--worker", folder,
            ]  # fmt: skip
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(result.stderr[-4000:])
            rows = [json.loads((Path(folder) / f"rank{rank}.json").read_text()) for rank in range(processes)]
        for row in rows:
            print(json.dumps(row))
        per_rank = lambda key: ", ".join(f"{row[key]:+.1f}" for row in rows)  # noqa: E731
        print(
            f"{processes} process(es): {rows[0]['samples_per_second']:.0f} samples/s; latent cache "
            f"{rows[0]['cache_mib_on_disk']:.1f} MiB on disk; per process, reading all of it: own memory "
            f"{per_rank('cache_read_anon_mib')} MiB, mapped file pages (shared) {per_rank('cache_read_file_mib')} MiB; "
            f"holding it as a tensor instead: own memory {per_rank('tensor_anon_mib')} MiB"
        )


if __name__ == "__main__":
    main()
