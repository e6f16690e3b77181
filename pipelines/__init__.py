"""diffusers side of uniflow-hf (installed as `uniflow_hf.pipelines`)."""

from .scheduling_uniflow_flow_match import UniFlowFlowMatchScheduler, UniFlowFlowMatchSchedulerOutput, time_grid


__all__ = ["UniFlowFlowMatchScheduler", "UniFlowFlowMatchSchedulerOutput", "time_grid"]
