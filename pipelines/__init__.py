"""diffusers side of uniflow-hf (installed as `uniflow_hf.pipelines`)."""

from .pipeline_uniflow_class_conditional import UniFlowClassConditionalPipeline
from .pipeline_uniflow_reconstruction import UniFlowReconstructionPipeline
from .scheduling_uniflow_flow_match import UniFlowFlowMatchScheduler, UniFlowFlowMatchSchedulerOutput, time_grid


PIPELINE_CLASSES = (UniFlowReconstructionPipeline, UniFlowClassConditionalPipeline)


def register_pipelines_with_diffusers() -> None:
    """Let `DiffusionPipeline.from_pretrained(folder)` load our pipelines: it looks the `_class_name` of
    `model_index.json` up as an attribute of the `diffusers` module. (`import uniflow_hf` calls this.)"""
    import diffusers

    for pipeline_class in PIPELINE_CLASSES:
        setattr(diffusers, pipeline_class.__name__, pipeline_class)


__all__ = [
    "UniFlowClassConditionalPipeline",
    "UniFlowFlowMatchScheduler",
    "UniFlowFlowMatchSchedulerOutput",
    "UniFlowReconstructionPipeline",
    "register_pipelines_with_diffusers",
    "time_grid",
]
