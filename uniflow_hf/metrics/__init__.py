# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Reconstruction metrics: PSNR, SSIM, rFID and a Fréchet distance over any feature extractor.

Each is an `evaluate` module inside the package, loaded offline by its path,
`evaluate.load(metric_path("psnr")).compute(predictions=..., references=...)` on channels-last images in [0, 1];
the functions below are the same math on (B, C, H, W) tensors, for streamed evaluations (`uniflow_hf.evaluation`).
"""

import os

from ._common import (
    FeatureStatistics,
    extract_features,
    features_from_output,
    frechet_distance,
    frechet_distance_of_statistics,
    peak_signal_noise_ratio,
    structural_similarity,
)
from ._inception import FID_WEIGHTS_FILENAME, FIDInceptionV3


METRIC_NAMES = ("psnr", "ssim", "rfid", "frechet_distance")


def metric_path(name: str) -> str:
    """The folder of the `evaluate` module `name` inside the installed package."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; uniflow_hf ships {', '.join(METRIC_NAMES)}.")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
