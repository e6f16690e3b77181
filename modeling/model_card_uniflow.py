# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Moved to `uniflow_hf.model_card` (package infrastructure, not part of the code saved beside the weights); kept
for the pipelines' import until they use the new place."""

from uniflow_hf.model_card import hub_repo_id, save_model_card, saving_pipeline  # noqa: F401
