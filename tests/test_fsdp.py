"""FSDP2 (`torch.distributed.fsdp.fully_shard`) sharded training of the tokenizer gives the result of one process.

`torchrun --nproc_per_node 2` (gloo on CPU) shards a `UniFlowModel` (each `_no_split_modules` block, then the whole
model, as Accelerate's FSDP2 auto-wrap does) and trains it for a few SGD steps, each process on its half of the
global batch, with the flow's noise and timesteps fixed; one process trains the unsharded model on the whole batch.
The weights must agree. The sharded model then runs `encode`/`decode` outside `forward` (they register themselves
as FSDP forward methods) and `save_pretrained` gathers the full weights, written by rank 0; `from_pretrained` on that
folder gives the sharded model's outputs.

Run as a script (by the test, through torchrun): `python tests/test_fsdp.py OUTPUT_DIR`.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from conftest import TINY_CONFIG, pretrained_tiny_model


NUM_STEPS = 3
GLOBAL_BATCH = 4


def build_model():
    """The same model in every process: the tiny pretrained model as a distillation student whose encoder has drifted
    from its teacher (so that the adaptive layer weights differ), with a large β."""
    model = pretrained_tiny_model()
    model.config.distillation_beta = 20.0
    model.enable_distillation()
    drift = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.vision_model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=drift), alpha=0.05)
    return model


def batch():
    """The global batch: images, and the flow loss's noise and timesteps (one draw per token)."""
    generator = torch.Generator().manual_seed(2)
    num_tokens = (TINY_CONFIG["image_size"] // TINY_CONFIG["patch_size"]) ** 2
    patch_dim = 3 * TINY_CONFIG["patch_size"] ** 2
    return {
        "pixel_values": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator),
        "noise": torch.randn(GLOBAL_BATCH, 1, num_tokens, patch_dim, generator=generator),
        "timesteps": 1000 * torch.rand(GLOBAL_BATCH, 1, num_tokens, generator=generator),
    }


def train(model, rows: slice):
    """SGD steps (a linear optimizer: the comparison measures the gradients) on `rows` of the global batch."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
    inputs = {name: value[rows] for name, value in batch().items()}
    model.train()
    for _ in range(NUM_STEPS):
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def inference_outputs(model):
    pixel_values = batch()["pixel_values"]
    latents = model.encode(pixel_values)
    decoded = model.decode(latents, num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    return {"latents": latents, "decoded": decoded}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fsdp2_training_saving_and_inference_match_one_process(tmp_path):
    import uniflow_hf
    from safetensors.torch import load_file

    from uniflow_hf import UniFlowModel

    source_root = os.path.dirname(os.path.dirname(uniflow_hf.__file__))  # the workers import this same package
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo",
        "PYTHONPATH": os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")])),
    }  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    single = train(build_model(), slice(None))
    assert {"config.json", "model.safetensors"} <= {path.name for path in (tmp_path / "saved").iterdir()}
    assert not list(tmp_path.glob(".saved.saving-*"))  # no staging folder left by either process
    reloaded = UniFlowModel.from_pretrained(tmp_path / "saved")
    initial = dict(build_model().named_parameters())
    expected = {name: p for name, p in single.named_parameters() if not name.startswith("distillation_teacher.")}
    got = dict(reloaded.named_parameters())
    assert got.keys() == expected.keys()
    assert max((expected[name] - initial[name]).abs().max().item() for name in expected) > 1e-2  # training moved them
    for name, weight in expected.items():
        torch.testing.assert_close(got[name], weight, rtol=1e-5, atol=1e-6, msg=name)

    sharded_outputs = load_file(tmp_path / "outputs.safetensors")
    with torch.no_grad():
        reloaded_outputs = inference_outputs(reloaded)
    assert sharded_outputs.keys() == reloaded_outputs.keys()
    for name, value in reloaded_outputs.items():
        torch.testing.assert_close(sharded_outputs[name], value, rtol=0, atol=0, msg=name)


if __name__ == "__main__":  # one torchrun worker
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    output_dir = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world_size,))
    model = build_model()
    for module in model.modules():  # Accelerate's FSDP2 auto-wrap policy: by `_no_split_modules`
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    per_process = GLOBAL_BATCH // world_size
    train(model, slice(rank * per_process, (rank + 1) * per_process))

    with torch.no_grad():
        outputs = inference_outputs(model)  # `encode`/`decode` of the sharded model, outside `forward`
    model.save_pretrained(output_dir / "saved")
    if rank == 0:
        save_file({name: value.contiguous() for name, value in outputs.items()}, output_dir / "outputs.safetensors")
    dist.barrier()
    dist.destroy_process_group()
    # Skip the interpreter's teardown: a thread left by the c10d/gloo stack sometimes aborts it
    # ("terminate called without an active exception") after all the work is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
