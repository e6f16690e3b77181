# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""PSNR, SSIM, rFID and a Fréchet distance over any feature extractor: `evaluate` modules inside the package,
`evaluate.load(metric_path("psnr")).compute(predictions=..., references=...)` on channels-last images in [0, 1]; the
functions are the same math on (B, C, H, W) tensors (`uniflow_hf.evaluation`)."""

import os

from ._common import FeatureStatistics, frechet_distance, peak_signal_noise_ratio, structural_similarity
from ._inception import FID_WEIGHTS_FILENAME, FIDInceptionV3


METRIC_NAMES = ("psnr", "ssim", "rfid", "frechet_distance")


def metric_path(name: str) -> str:
    """The folder of the `evaluate` module `name` inside the installed package."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; uniflow_hf ships {', '.join(METRIC_NAMES)}.")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
