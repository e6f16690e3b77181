# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The `ssim` `evaluate` module of uniflow-hf (`evaluate.load(metric_path("ssim"))`)."""

from uniflow_hf.metrics._modules import SSIM  # noqa: F401  (the metric `evaluate.load` finds)
