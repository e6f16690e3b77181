"""transformers side of uniflow-hf (installed as `uniflow_hf.modeling`): configuration, architecture, image
processor and the official release's key map."""

from .configuration_uniflow import *  # noqa: F403
from .image_processing_uniflow import *  # noqa: F403
from .loading_uniflow import *  # noqa: F403
from .loss_uniflow import *  # noqa: F403
from .modeling_uniflow import *  # noqa: F403
from .modeling_uniflow_llava import *  # noqa: F403
