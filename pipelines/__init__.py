"""diffusers side of uniflow-hf (installed as `uniflow_hf.pipelines`)."""

import functools
import sys

from ..modeling import configuration_uniflow, flow_matching, image_processing_uniflow, modeling_uniflow


# The scheduler imports the flow math as its sibling `.flow_matching`, as it does where a saved pipeline's code is
# loaded with `trust_remote_code`; in the package that sibling is the model's own file.
sys.modules[f"{__name__}.flow_matching"] = flow_matching

from . import (  # noqa: E402
    pipeline_uniflow_class_conditional, pipeline_uniflow_reconstruction, scheduling_uniflow_flow_match,
)
from .pipeline_uniflow_class_conditional import UniFlowClassConditionalPipeline  # noqa: E402
from .pipeline_uniflow_reconstruction import UniFlowReconstructionPipeline  # noqa: E402
from .scheduling_uniflow_flow_match import (  # noqa: E402, F401 (re-exported)
    UniFlowFlowMatchScheduler, UniFlowFlowMatchSchedulerOutput, time_grid,
)


# the module files that saved `[module file, class]` entries name -> the package's modules
PACKAGED_MODULES = {
    module.__name__.rsplit(".", 1)[-1]: module
    for module in (
        pipeline_uniflow_class_conditional, pipeline_uniflow_reconstruction, scheduling_uniflow_flow_match,
        modeling_uniflow, configuration_uniflow, image_processing_uniflow,
    )
}


def packaged_class(module_file: str, class_name: str | None):
    """The package's class that a saved `[module file, class]` entry names, or `None`."""
    module = PACKAGED_MODULES.get(module_file.removesuffix(".py"))
    return getattr(module, class_name, None) if module is not None and class_name else None


def register_pipelines_with_diffusers() -> None:
    """Let diffusers' loader resolve a saved `[module file, class]` entry naming one of our module files to the
    package's class without `trust_remote_code` (as transformers prefers a registered class over `auto_map`), and put
    the pipelines and the scheduler on the `diffusers` namespace, where folders saved before that form look them up."""
    import diffusers
    from diffusers.pipelines import pipeline_loading_utils as loading

    import uniflow_hf

    for component_class in (UniFlowReconstructionPipeline, UniFlowClassConditionalPipeline, UniFlowFlowMatchScheduler):
        setattr(diffusers, component_class.__name__, component_class)
    if getattr(loading.get_class_from_dynamic_module, "prefers_uniflow_hf", False):
        return

    saved_code_class = loading.get_class_from_dynamic_module
    library = loading._get_library_or_raise

    @functools.wraps(saved_code_class)
    def get_class_from_dynamic_module(pretrained_model_name_or_path, module_file, **kwargs):
        packaged = None if kwargs.get("trust_remote_code") else packaged_class(module_file, kwargs.get("class_name"))
        return packaged or saved_code_class(pretrained_model_name_or_path, module_file, **kwargs)

    @functools.wraps(library)
    def get_library_or_raise(library_name):
        # a component passed to `from_pretrained` is checked against the library its entry names
        return uniflow_hf if library_name.removesuffix(".py") in PACKAGED_MODULES else library(library_name)

    get_class_from_dynamic_module.prefers_uniflow_hf = True
    loading.get_class_from_dynamic_module = get_class_from_dynamic_module
    loading._get_library_or_raise = get_library_or_raise
