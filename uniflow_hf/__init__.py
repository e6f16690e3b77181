"""uniflow-hf: UniFlow (Yue et al., ICLR 2026) as a transformers / diffusers citizen.

Importing this package registers the UniFlow classes with transformers' Auto classes (as the `auto_map` of saved
folders does) and diffusers' loader, and gives the models the package's `save_pretrained` (atomic, with a model card)
and `from_pretrained` (official names mapped, missing or extra weights refused).
"""

import os

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageToImage,
)


# In a source checkout `modeling/` and `pipelines/` sit beside this package (installed, inside it).
if not os.path.isdir(os.path.join(__path__[0], "modeling")):
    __path__.append(os.path.dirname(os.path.abspath(__path__[0])))

from .modeling import (
    UniFlowConfig,
    UniFlowForImageClassification,
    UniFlowImageProcessor,
    UniFlowLlavaForConditionalGeneration,
    UniFlowModel,
    UniFlowModelOutput,
    UniFlowPreTrainedModel,
    UniFlowVisionModel,
    adaptive_distillation_loss,
)
from .pipelines import (
    UniFlowClassConditionalPipeline,
    UniFlowFlowMatchScheduler,
    UniFlowReconstructionPipeline,
    register_pipelines_with_diffusers,
)
from .llava import LlavaImageQACollator, build_llava_processor, finetune_llava_lora
from .training import UniFlowIterableTrainingDataset, UniFlowTrainer, UniFlowTrainingDataset, apply_lora, train_tokenizer
from .evaluation import evaluate_reconstruction
from .hardware import choose_dtype, resolve_dtype
from .metrics import metric_path
from .serialization import from_pretrained, save_pretrained, upload_modified_files

# diffusers' pipeline loader resolves a component saved as ["uniflow_hf", "<ClassName>"] in model_index.json with
# `getattr(uniflow_hf, "<ClassName>")`, and picks its load method by testing it against these base classes, which it
# also looks up by name on this module. They are here for that loader, not part of our API.
from diffusers import SchedulerMixin  # noqa: E402, F401
from transformers import ImageProcessingMixin, PreTrainedModel  # noqa: E402, F401


__version__ = "0.1.0"

# The shipped UniFlow-FMNIST pipeline: `UniFlowClassConditionalPipeline.from_pretrained(FMNIST_MODEL_PATH)`.
FMNIST_MODEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "uniflow-fmnist")

UniFlowPreTrainedModel.from_pretrained = classmethod(from_pretrained)
UniFlowPreTrainedModel.save_pretrained = save_pretrained
UniFlowPreTrainedModel._upload_modified_files = upload_modified_files
AutoConfig.register("uniflow", UniFlowConfig, exist_ok=True)
AutoModel.register(UniFlowConfig, UniFlowVisionModel, exist_ok=True)  # the tower (LLaVA, feature extraction)
AutoModelForImageClassification.register(UniFlowConfig, UniFlowForImageClassification, exist_ok=True)
AutoModelForImageToImage.register(UniFlowConfig, UniFlowModel, exist_ok=True)
AutoImageProcessor.register(UniFlowConfig, image_processor_classes={"pil": UniFlowImageProcessor}, exist_ok=True)
register_pipelines_with_diffusers()

__all__ = [
    "UniFlowConfig",
    "UniFlowForImageClassification",
    "UniFlowImageProcessor",
    "UniFlowLlavaForConditionalGeneration",
    "UniFlowModel",
    "UniFlowModelOutput",
    "UniFlowPreTrainedModel",
    "UniFlowVisionModel",
    "UniFlowFlowMatchScheduler",
    "UniFlowReconstructionPipeline",
    "UniFlowClassConditionalPipeline",
    "adaptive_distillation_loss",
    "LlavaImageQACollator",
    "build_llava_processor",
    "finetune_llava_lora",
    "UniFlowTrainer",
    "UniFlowTrainingDataset",
    "UniFlowIterableTrainingDataset",
    "apply_lora",
    "train_tokenizer",
    "evaluate_reconstruction",
    "choose_dtype",
    "resolve_dtype",
    "metric_path",
    "FMNIST_MODEL_PATH",
]
