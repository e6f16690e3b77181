# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The `ssim` `evaluate` module shipped with uniflow-hf: `evaluate.load(uniflow_hf.metrics.metric_path("ssim"))`."""

from uniflow_hf.metrics._modules import SSIM  # noqa: F401  (the module's metric, as `evaluate.load` finds it)
