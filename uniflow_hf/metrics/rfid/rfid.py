# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The `rfid` `evaluate` module shipped with uniflow-hf: `evaluate.load(uniflow_hf.metrics.metric_path("rfid"))`."""

from uniflow_hf.metrics._modules import RFID  # noqa: F401  (the module's metric, as `evaluate.load` finds it)
