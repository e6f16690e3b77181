# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Reconstruction metrics of UniFlow: PSNR, SSIM, rFID and a Fréchet distance over any feature extractor.

Each is an `evaluate` module shipped inside the package, loadable offline by its local path:

    >>> import evaluate
    >>> from uniflow_hf.metrics import metric_path
    >>> psnr = evaluate.load(metric_path("psnr"))
    >>> psnr.compute(predictions=reconstructions, references=originals)  # channels-last images in [0, 1]

The functions and classes below are the same math on torch tensors (B, C, H, W), for streaming evaluations
(`uniflow_hf.evaluation`) where storing every image in an `evaluate` cache would be too slow.
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
    """The folder of the `evaluate` module `name` ("psnr", "ssim", "rfid" or "frechet_distance") inside the
    installed package, for `evaluate.load(metric_path(name))` (nothing is fetched from the Hub)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; uniflow_hf ships {', '.join(METRIC_NAMES)}.")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    if not os.path.isfile(os.path.join(path, f"{name}.py")):
        raise FileNotFoundError(f"The metric module {name}.py is missing from {path}; reinstall uniflow-hf.")
    return path


__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FIDInceptionV3",
    "FeatureStatistics",
    "METRIC_NAMES",
    "extract_features",
    "features_from_output",
    "frechet_distance",
    "frechet_distance_of_statistics",
    "metric_path",
    "peak_signal_noise_ratio",
    "structural_similarity",
]
