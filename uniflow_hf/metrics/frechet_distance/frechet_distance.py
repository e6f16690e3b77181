# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The `frechet_distance` `evaluate` module shipped with uniflow-hf: `evaluate.load(uniflow_hf.metrics.metric_path("frechet_distance"))`."""

from uniflow_hf.metrics._modules import FrechetDistance  # noqa: F401  (the module's metric, as `evaluate.load` finds it)
