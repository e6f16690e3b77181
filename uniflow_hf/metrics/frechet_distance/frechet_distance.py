# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The `frechet_distance` `evaluate` module of uniflow-hf (`evaluate.load(metric_path("frechet_distance"))`)."""

from uniflow_hf.metrics._modules import FrechetDistance  # noqa: F401  (the metric `evaluate.load` finds)
