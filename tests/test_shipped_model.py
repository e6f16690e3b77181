"""The shipped UniFlow-FMNIST pipeline generates what it generated when it shipped."""

import hashlib
from pathlib import Path

import numpy as np
import torch


def test_seeded_generation_is_unchanged():
    """A seeded generation of the shipped pipeline, checksummed on commit 14e3832 (before the design was
    consolidated, issue 37; AMD EPYC, AVX2) on one thread (the float sums depend on how threads split them):
    refactoring must not change a single bit of what users get. The 8-bit images are the same on 1 and 2 threads."""
    import uniflow_hf
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(Path(uniflow_hf.__file__).parent / "models" / "uniflow-fmnist")
    pipe.set_progress_bar_config(disable=True)
    labels = ["T-shirt/top", "Sneaker", "Bag", 9]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = pipe(labels, generator=torch.manual_seed(0), output_type="np").images
        latents = pipe(["Coat"], generator=torch.manual_seed(1), output_type="latent").images
    finally:
        torch.set_num_threads(threads)
    assert images.dtype == np.float32 and images.shape == (4, 28, 28, 3)
    sha256 = lambda array: hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()  # noqa: E731
    assert sha256(images) == "3ae006536659d8d50dbd67383e938c3764f882b97f585922af1ed89d3e5cfb1a"
    assert sha256((images * 255).round().astype(np.uint8)) == (
        "d08848a33e2c9d3b4049cdae99f62fa821b556510c04302aade396ccd63271b2"
    )
    assert sha256(latents.float().numpy()) == "0219aac52e2e0f26a4bea4b1d65c0cf4ea06b419e2d2857537e00621e866437d"
