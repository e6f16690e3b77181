"""diffusers side of uniflow-hf (installed as `uniflow_hf.pipelines`)."""

from .pipeline_uniflow_class_conditional import UniFlowClassConditionalPipeline
from .pipeline_uniflow_reconstruction import UniFlowReconstructionPipeline
from .scheduling_uniflow_flow_match import UniFlowFlowMatchScheduler, UniFlowFlowMatchSchedulerOutput, time_grid


PIPELINE_CLASSES = (UniFlowReconstructionPipeline, UniFlowClassConditionalPipeline)
SCHEDULER_CLASSES = (UniFlowFlowMatchScheduler,)


def register_pipelines_with_diffusers() -> None:
    """Put our pipelines and scheduler on the `diffusers` namespace: `DiffusionPipeline.from_pretrained(folder)` looks
    the `_class_name` of `model_index.json` up there, and a scheduler's `compatibles` resolves its class names there.
    (`import uniflow_hf` calls this.)"""
    import diffusers

    for component_class in PIPELINE_CLASSES + SCHEDULER_CLASSES:
        setattr(diffusers, component_class.__name__, component_class)


__all__ = [
    "UniFlowClassConditionalPipeline",
    "UniFlowFlowMatchScheduler",
    "UniFlowFlowMatchSchedulerOutput",
    "UniFlowReconstructionPipeline",
    "register_pipelines_with_diffusers",
    "time_grid",
]
