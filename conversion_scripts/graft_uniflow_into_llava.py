"""Graft UniFlow's encoder into a LLaVA checkpoint as its vision tower (the options of `uniflow-hf graft-llava`).

    python conversion_scripts/graft_uniflow_into_llava.py --llava LLAVA_DIR --uniflow UNIFLOW_DIR --output OUT_DIR

`LLAVA_DIR`: a transformers LLaVA checkpoint (legacy or transformers 5 key layout; its tower is never read). The output
keeps the language model bit-exact, holds UniFlow's encoder in its dtype as the tower, a projector re-initialised
(seeded) unless `--keep-projector` and it fits, and a processor; it loads with `LlavaForConditionalGeneration` once
`uniflow_hf` is imported, and without uniflow-hf with `trust_remote_code=True`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import torch


# Legacy LLaVA names -> transformers 5 module names.
LEGACY_TO_MODULE_KEYS = (
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.", "model.language_model."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
)
_MODULE_PREFIXES = ("model.language_model.", "model.vision_tower.", "model.multi_modal_projector.", "lm_head.")
TOWER_PREFIX = "model.vision_tower."
PROJECTOR_PREFIX = "model.multi_modal_projector."


def to_module_key(key: str) -> str:
    """A LLaVA checkpoint key, in either layout, as the transformers 5 module name."""
    if key.startswith(_MODULE_PREFIXES):
        return key
    for pattern, replacement in LEGACY_TO_MODULE_KEYS:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    raise ValueError(
        f"Unrecognised LLaVA weight {key!r}: expected keys under language_model / vision_tower / "
        "multi_modal_projector (legacy layout) or model.language_model / model.vision_tower / "
        "model.multi_modal_projector / lm_head (transformers 5 layout)."
    )


def _weight_files(llava_dir: Path) -> list[Path]:
    index = llava_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [llava_dir / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that are not there: {missing}.")
        return files
    if (llava_dir / "model.safetensors").is_file():
        return [llava_dir / "model.safetensors"]
    found = sorted(p.name for p in llava_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
    raise FileNotFoundError(
        f"{llava_dir} has no LLaVA weights: expected model.safetensors or model.safetensors.index.json with its "
        f"shards (found {found or 'no weight files'}; convert .bin checkpoints to safetensors first)."
    )


def read_llava_checkpoint(llava_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, every weight but the tower's under its transformers 5 module name) of a LLaVA checkpoint."""
    from safetensors import safe_open

    llava_dir = Path(llava_dir)
    if not llava_dir.is_dir():
        raise FileNotFoundError(f"--llava {llava_dir} is not a folder.")
    config_file = llava_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{llava_dir} has no config.json: expected a LLaVA checkpoint in transformers format.")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "llava":
        raise ValueError(
            f"{llava_dir} is not a LLaVA checkpoint: its config.json has model_type {config.get('model_type')!r}, "
            "expected 'llava' (LlavaForConditionalGeneration)."
        )
    state_dict = {}
    for path in _weight_files(llava_dir):
        with safe_open(str(path), framework="pt") as weights:
            for key, module_key in ((key, to_module_key(key)) for key in weights.keys()):
                if not module_key.startswith(TOWER_PREFIX):
                    state_dict[module_key] = weights.get_tensor(key)
    if not any(key.startswith("model.language_model.") for key in state_dict):
        raise ValueError(f"{llava_dir} holds no language model weights (no language_model.* keys).")
    return config, state_dict


def load_uniflow_tower(uniflow_dir: str | Path, vision_feature_source: str | None = None):
    """UniFlow's encoder (`UniFlowVisionModel`) from a UniFlowModel, official or tower folder."""
    from uniflow_hf import UniFlowConfig, UniFlowVisionModel

    uniflow_dir = Path(uniflow_dir)
    if not (uniflow_dir / "config.json").is_file():
        raise FileNotFoundError(f"--uniflow {uniflow_dir} has no config.json: expected a UniFlow model folder.")
    config = UniFlowConfig.from_pretrained(uniflow_dir)
    if config.encoder_config is not None:
        raise ValueError(
            f"{uniflow_dir} wraps a foreign encoder ({config.encoder_config.model_type}); only UniFlow's own encoder "
            "is grafted by this script."
        )
    overrides = {} if vision_feature_source is None else {"vision_feature_source": vision_feature_source}
    return UniFlowVisionModel.from_pretrained(uniflow_dir, dtype=torch.float32, **overrides).eval()


def _check_feature_layers(vision_feature_layer, tower) -> None:
    num_states = tower.config.num_hidden_layers + 1 + int(tower.has_latent_head)
    layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)
    if not layers or any(not isinstance(i, int) or not -num_states <= i < num_states for i in layers):
        raise ValueError(
            f"`vision_feature_layer` {vision_feature_layer!r} does not index the {num_states} hidden states of the "
            f"UniFlow tower (embeddings, {tower.config.num_hidden_layers} layers"
            + (", the latent tokens" if tower.has_latent_head else "")
            + f"): use integers in [-{num_states}, {num_states - 1}]."
        )


def _projector_state_dict(config, old_state_dict: dict, keep_projector: bool, dtype, seed: int) -> dict:
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    projector = LlavaMultiModalProjector(config)
    old = {k[len(PROJECTOR_PREFIX) :]: v for k, v in old_state_dict.items() if k.startswith(PROJECTOR_PREFIX)}
    new_shapes = {name: tuple(p.shape) for name, p in projector.state_dict().items()}
    if keep_projector:
        old_shapes = {name: tuple(t.shape) for name, t in old.items()}
        if old_shapes != new_shapes:
            raise ValueError(
                "--keep-projector: the LLaVA's projector does not fit the UniFlow features (it has "
                f"{old_shapes or 'no weights'}, the new one needs {new_shapes}: the tower width "
                f"{config.vision_config.hidden_size} × the number of feature layers). Drop --keep-projector to "
                "re-initialise it."
            )
        return {PROJECTOR_PREFIX + name: tensor for name, tensor in old.items()}
    generator = torch.Generator().manual_seed(seed)
    std = getattr(config.text_config, "initializer_range", None) or 0.02
    with torch.no_grad():
        for linear in (projector.linear_1, projector.linear_2):
            torch.nn.init.normal_(linear.weight, mean=0.0, std=std, generator=generator)
            if linear.bias is not None:
                torch.nn.init.zeros_(linear.bias)
    return {PROJECTOR_PREFIX + name: tensor.to(dtype) for name, tensor in projector.state_dict().items()}


def _old_chat_template(llava_dir: Path) -> str | None:
    if (llava_dir / "chat_template.jinja").is_file():
        return (llava_dir / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json"):
        if (llava_dir / name).is_file():
            template = json.loads((llava_dir / name).read_text()).get("chat_template")
            if template:
                return template
    return None


def _save_processor(llava_dir: Path, uniflow_dir: Path, output_dir: Path, config, tower) -> bool:
    """Write the LlavaProcessor (UniFlow image processor + the LLaVA's tokenizer); False when it has no tokenizer."""
    from transformers import AutoTokenizer
    from transformers.utils import logging

    from uniflow_hf.evaluation import load_image_processor
    from uniflow_hf.llava import build_llava_processor

    try:
        tokenizer = AutoTokenizer.from_pretrained(llava_dir)
    except (OSError, ValueError) as error:
        logging.get_logger(__name__).warning(f"No tokenizer in {llava_dir} ({error}): no processor written.")
        return False
    image_processor = load_image_processor([uniflow_dir], tower.config.image_size)
    strategy, chat_template = config.vision_feature_select_strategy, _old_chat_template(llava_dir)
    processor = build_llava_processor(
        tokenizer, image_processor, strategy, patch_size=tower.config.patch_size, chat_template=chat_template
    )
    if processor.image_token_id != config.image_token_id:
        raise ValueError(
            f"The tokenizer's image token {processor.image_token!r} has id {processor.image_token_id} but the LLaVA "
            f"config's image_token_id is {config.image_token_id}: the checkpoint is inconsistent."
        )
    processor.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)  # preprocessor_config.json, for AutoImageProcessor alone
    return True


def graft_uniflow_into_llava(
    llava_dir: str | Path,
    uniflow_dir: str | Path,
    output_dir: str | Path,
    keep_projector: bool = False,
    vision_feature_layer: int | list[int] | None = None,
    vision_feature_select_strategy: str | None = None,
    vision_feature_source: str | None = None,
    seed: int = 0,
    verify: bool = True,
) -> Path:
    """Write the LLaVA of `llava_dir` with the UniFlow encoder of `uniflow_dir` as its tower to `output_dir` (see the
    module docstring) and, with `verify`, load it back and check every weight."""
    from huggingface_hub import save_torch_state_dict
    from transformers.dynamic_module_utils import custom_object_save

    import uniflow_hf  # noqa: F401  (registers UniFlowConfig / UniFlowVisionModel with the Auto classes)
    from uniflow_hf.llava import num_image_features
    from uniflow_hf.model_card import model_card
    from uniflow_hf.modeling.modeling_uniflow_llava import UniFlowLlavaConfig, UniFlowLlavaForConditionalGeneration

    llava_dir, uniflow_dir, output_dir = Path(llava_dir), Path(uniflow_dir), Path(output_dir)
    if output_dir.resolve() in (llava_dir.resolve(), uniflow_dir.resolve()):
        raise ValueError(f"--output {output_dir} must differ from the input folders.")
    config_dict, state_dict = read_llava_checkpoint(llava_dir)
    tower = load_uniflow_tower(uniflow_dir, vision_feature_source)

    if vision_feature_layer is None:
        vision_feature_layer = -1 if tower.has_latent_head else config_dict.get("vision_feature_layer", -2)
    _check_feature_layers(vision_feature_layer, tower)
    strategy = vision_feature_select_strategy or config_dict.get("vision_feature_select_strategy", "default")

    embeddings = state_dict.get("model.language_model.embed_tokens.weight", next(iter(state_dict.values())))
    language_model_dtype = embeddings.dtype
    config_dict = {k: v for k, v in config_dict.items() if k not in ("transformers_version", "architectures")}
    config_dict.update(
        vision_config=tower.config.to_dict(), vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=strategy, dtype=str(language_model_dtype).removeprefix("torch."),
    )
    config = UniFlowLlavaConfig.from_dict(config_dict)
    config.image_seq_length = num_image_features(config)
    config.architectures = ["LlavaForConditionalGeneration"]

    tower.to(language_model_dtype)
    new_state_dict = {k: v for k, v in state_dict.items() if not k.startswith(PROJECTOR_PREFIX)}
    new_state_dict.update({TOWER_PREFIX + name: tensor for name, tensor in tower.state_dict().items()})
    new_state_dict.update(_projector_state_dict(config, state_dict, keep_projector, language_model_dtype, seed))

    output_dir.mkdir(parents=True, exist_ok=True)
    # The code beside the weights and both `auto_map` entries (config and model).
    with torch.device("meta"):
        model = UniFlowLlavaForConditionalGeneration(config)
    custom_object_save(model, output_dir, config=config)
    config.save_pretrained(output_dir)
    save_torch_state_dict(new_state_dict, output_dir, max_shard_size="5GB")
    if (llava_dir / "generation_config.json").is_file():
        shutil.copy(llava_dir / "generation_config.json", output_dir / "generation_config.json")
    _save_processor(llava_dir, uniflow_dir, output_dir, config, tower)
    if not (output_dir / "README.md").exists():
        model.name_or_path = str(llava_dir)  # the card's base_model when it names a Hub repository
        model_card(model).save(output_dir / "README.md")
    if verify:
        verify_grafted(output_dir)
    return output_dir


def verify_grafted(output_dir: str | Path) -> None:
    """Raise unless `output_dir` loads with `LlavaForConditionalGeneration` with nothing missing or unexpected."""
    from transformers import LlavaForConditionalGeneration

    import uniflow_hf  # noqa: F401

    _, info = LlavaForConditionalGeneration.from_pretrained(output_dir, output_loading_info=True)
    problems = {name: sorted(keys)[:5] for name, keys in info.items() if name.endswith("_keys") and keys}
    if problems:
        raise RuntimeError(f"The grafted checkpoint {output_dir} does not load cleanly: {problems}.")


def main(argv: list[str] | None = None) -> int:
    from uniflow_hf_cli import main as cli_main

    return cli_main(["graft-llava", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
