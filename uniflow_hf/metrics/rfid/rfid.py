# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The `rfid` `evaluate` module of uniflow-hf (`evaluate.load(metric_path("rfid"))`)."""

from uniflow_hf.metrics._modules import RFID  # noqa: F401  (the metric `evaluate.load` finds)
