"""UniFlow as a LLaVA vision tower: the tower in a stock `LlavaForConditionalGeneration`, the processor's image-token
count, grafting into an existing (CLIP-tower) LLaVA checkpoint in both key layouts, and LoRA fine-tuning with PEFT.
Everything is built offline and tiny: a locally trained word-level tokenizer, a 2-layer Llama, tiny CLIP / UniFlow."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import TINY_CONFIG


IMAGE_TOKEN = "<image>"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
QUESTION = "What colour is the image?"
CORPUS = [
    "USER : What colour is the image ? ASSISTANT : red green blue yellow",
    "What is in the image ? a cat a dog a shoe a bag",
]


# ----------------------------------------------------------------------------------------------------- builders
def build_tokenizer():
    from uniflow_hf.llava import build_word_level_tokenizer

    return build_word_level_tokenizer(CORPUS, IMAGE_TOKEN)


def text_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,  # a frozen random lm_head of std 0.02 caps 32-wide logits near 0: LoRA could not learn
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def llava_config(tokenizer, vision_config, **kwargs):
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **kwargs,
    )


def uniflow_llava(tokenizer, seed=0, **kwargs):
    from transformers import LlavaForConditionalGeneration

    from uniflow_hf import UniFlowConfig

    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(llava_config(tokenizer, UniFlowConfig(**TINY_CONFIG), **kwargs)).eval()


def images(n, size=(40, 50), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def colour_rows(repeats=2):
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(repeats):
        for name, rgb in COLOURS.items():
            pixels = np.clip(np.array(rgb) + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            rows.append({"image": Image.fromarray(pixels), "question": QUESTION, "answer": name})
    return rows


def read_safetensors_folder(folder):
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def legacy_to_module(key):
    from uniflow_hf.conversion_scripts.graft_uniflow_into_llava import to_module_key

    return to_module_key(key)


# ----------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def uniflow_dir(tmp_path_factory):
    from uniflow_hf import UniFlowConfig, UniFlowModel

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("uniflow")
    UniFlowModel(UniFlowConfig(**TINY_CONFIG)).save_pretrained(folder)
    return folder


def save_clip_llava(folder, tokenizer, hidden_size=32, layout="legacy"):
    """A stock LLaVA with a tiny CLIP tower, as transformers saves it (legacy layout) or with its module names."""
    from transformers import CLIPVisionConfig, LlavaForConditionalGeneration

    clip = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(2)
    model = LlavaForConditionalGeneration(llava_config(tokenizer, clip, image_seq_length=16))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    if layout == "module":
        (folder / "model.safetensors").unlink()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def clip_llava_dir(tmp_path_factory, tokenizer):
    return save_clip_llava(tmp_path_factory.mktemp("clip_llava"), tokenizer)


@pytest.fixture(scope="module")
def grafted_dir(tmp_path_factory, clip_llava_dir, uniflow_dir):
    from uniflow_hf.conversion_scripts.graft_uniflow_into_llava import graft_uniflow_into_llava

    return graft_uniflow_into_llava(clip_llava_dir, uniflow_dir, tmp_path_factory.mktemp("grafted"))


# ----------------------------------------------------------------------------------------- the tower in LLaVA
@pytest.mark.parametrize(
    "vision_feature_layer, strategy", [(0, "default"), (-2, "full"), ([0, -1], "default"), (-1, "full")]
)
def test_tower_in_stock_llava(tokenizer, vision_feature_layer, strategy):
    """LLaVA selects the hidden states it asks for (layer 0 is falsy, -2, lists) and drops/keeps our CLS token;
    the processor inserts exactly as many image tokens as the model makes features; generate runs."""
    from uniflow_hf.llava import build_llava_processor, num_image_features

    model = uniflow_llava(
        tokenizer, vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=strategy
    )
    processor = build_llava_processor(tokenizer, model.config.vision_config, strategy)
    texts = [f"USER: {IMAGE_TOKEN} What is in the image?", f"{IMAGE_TOKEN} a"]
    inputs = processor(images=images(2), text=texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"]).pooler_output
        states = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else vision_feature_layer
        selected = torch.cat([states[i][:, 1:] if strategy == "default" else states[i] for i in layers], dim=-1)
        expected = model.model.multi_modal_projector(selected)
        logits = model(**inputs).logits

    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    assert [f.shape[0] for f in features] == image_tokens == [num_image_features(model.config)] * 2
    assert image_tokens[0] == 16 + (strategy == "full")
    torch.testing.assert_close(torch.stack(list(features)), expected)
    assert logits.shape[:2] == inputs["input_ids"].shape

    prompts = processor(images=images(2), text=texts, padding=True, padding_side="left", return_tensors="pt")
    generated = model.generate(**prompts, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, prompts["input_ids"].shape[1] + 3)


def test_tower_returns_hidden_states_only_when_asked(tokenizer):
    model = uniflow_llava(tokenizer)
    tower = model.model.vision_tower
    pixel_values = torch.randn(1, 3, 32, 32)
    assert tower(pixel_values).hidden_states is None
    for request in (True, 0, -2, [0, -1]):
        states = tower(pixel_values, output_hidden_states=request).hidden_states
        assert len(states) == TINY_CONFIG["num_hidden_layers"] + 1


def test_save_load_and_auto_class(tokenizer, tmp_path):
    from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

    from uniflow_hf.llava import build_llava_processor

    model = uniflow_llava(tokenizer)
    processor = build_llava_processor(tokenizer, model.config.vision_config)
    inputs = processor(images=images(1), text=[f"{IMAGE_TOKEN} What is in the image ?"], return_tensors="pt")
    model.save_pretrained(tmp_path)
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(auto) is LlavaForConditionalGeneration
    assert type(auto.model.vision_tower).__name__ == "UniFlowVisionModel"
    with torch.no_grad():
        expected = model(**inputs).logits
        assert torch.equal(reloaded(**inputs).logits, expected)
        assert torch.equal(auto(**inputs).logits, expected)


# ------------------------------------------------------------------------------------------------ latent tokens
def test_latent_feature_source(tokenizer, uniflow_dir, official_tiny_dir, tmp_path):
    """`vision_feature_source="latent"`: the tower loads latent_proj/latent_unproj from a UniFlowModel folder, `encode`
    equals UniFlowModel.encode, and LLaVA (vision_feature_layer=-1) projects latent_unproj(latents)."""
    from transformers import LlavaForConditionalGeneration

    from uniflow_hf import UniFlowModel, UniFlowVisionModel
    from uniflow_hf.llava import build_llava_processor

    uniflow = UniFlowModel.from_pretrained(uniflow_dir).eval()
    tower = UniFlowVisionModel.from_pretrained(uniflow_dir, vision_feature_source="latent").eval()
    assert tower.has_latent_head
    for name in ("latent_proj", "latent_unproj"):
        for key, value in getattr(uniflow, name).state_dict().items():
            assert torch.equal(getattr(tower, name).state_dict()[key], value)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        latents = uniflow.encode(pixel_values)
        assert torch.equal(tower.encode(pixel_values), latents)
        states = tower(pixel_values, output_hidden_states=-1).hidden_states
    assert len(states) == TINY_CONFIG["num_hidden_layers"] + 2
    torch.testing.assert_close(states[-1][:, 1:], uniflow.latent_unproj(latents))

    model = LlavaForConditionalGeneration(
        llava_config(tokenizer, tower.config, vision_feature_layer=-1)
    ).eval()
    model.model.vision_tower.load_state_dict(tower.state_dict())
    processor = build_llava_processor(tokenizer, tower.config)
    inputs = processor(images=images(2), text=[f"{IMAGE_TOKEN} a"] * 2, return_tensors="pt")
    with torch.no_grad():
        features = torch.stack(list(model.model.get_image_features(inputs["pixel_values"]).pooler_output))
        expected = model.model.multi_modal_projector(uniflow.latent_unproj(uniflow.encode(inputs["pixel_values"])))
        model(**inputs)
    torch.testing.assert_close(features, expected)
    assert features.shape[1] == (inputs["input_ids"] == model.config.image_token_id).sum() // 2

    # The official release's `chal_proj` is the latent head too.
    official = UniFlowVisionModel.from_pretrained(official_tiny_dir, vision_feature_source="latent").eval()
    expected = load_file(str(official_tiny_dir / "expected.safetensors"))["latent_tokens"]
    with torch.no_grad():
        official_latents = official.encode(load_file(str(official_tiny_dir / "inputs.safetensors"))["pixel_values"])
    torch.testing.assert_close(official_latents, expected, atol=1e-5, rtol=0)

    # A tower folder without latent weights cannot become a latent tower.
    UniFlowVisionModel.from_pretrained(uniflow_dir).save_pretrained(tmp_path / "tower")
    with pytest.raises(ValueError, match="does not hold weights"):
        UniFlowVisionModel.from_pretrained(tmp_path / "tower", vision_feature_source="latent")
    with pytest.raises(ValueError, match="no latent head"):
        UniFlowVisionModel.from_pretrained(tmp_path / "tower").encode(pixel_values)


# ---------------------------------------------------------------------------------------------------- grafting
def check_grafted(original_dir, grafted, uniflow_dir, tokenizer, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from uniflow_hf import UniFlowImageProcessor, UniFlowVisionModel

    original = {legacy_to_module(k): v for k, v in read_safetensors_folder(original_dir).items()}
    written = read_safetensors_folder(grafted)
    tower = UniFlowVisionModel.from_pretrained(uniflow_dir)

    # Old tower weights never leak; the new tower is UniFlow's encoder, exactly.
    tower_keys = {k for k in written if "vision_tower" in k}
    assert tower_keys == {"model.vision_tower." + k for k in tower.state_dict()}
    assert not any(re.search(r"pre_layrnorm|post_layernorm|vision_model\.|self_attn", k) for k in tower_keys)
    for key, value in tower.state_dict().items():
        assert torch.equal(written["model.vision_tower." + key], value)

    model = LlavaForConditionalGeneration.from_pretrained(grafted).eval()
    # Language model and lm_head bit-exact.
    for key, value in model.state_dict().items():
        if key.startswith(("model.language_model.", "lm_head.")):
            assert torch.equal(value, original[key]), key
    # The projector is re-initialised (its input width changed from CLIP's 32 to UniFlow's 64), biases too.
    projector = model.model.multi_modal_projector
    assert projector.linear_1.weight.shape == (32, TINY_CONFIG["hidden_size"])
    assert not projector.linear_2.weight.equal(original["model.multi_modal_projector.linear_2.weight"])
    assert not projector.linear_1.bias.any() and not projector.linear_2.bias.any()

    config = model.config
    assert config.vision_config.model_type == "uniflow"
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    assert config.image_seq_length == 16

    processor = AutoProcessor.from_pretrained(grafted)
    assert isinstance(processor.image_processor, UniFlowImageProcessor)
    assert processor.chat_template == (original_dir / "chat_template.jinja").read_text()
    assert (grafted / "preprocessor_config.json").is_file()
    text = f"USER : {IMAGE_TOKEN} What colour is the image ?"
    inputs = processor(images=images(1), text=[text], return_tensors="pt")
    assert (inputs["input_ids"] == config.image_token_id).sum() == config.image_seq_length
    assert tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 2

    model.save_pretrained(tmp_path / "resaved")
    with torch.no_grad():
        resaved = LlavaForConditionalGeneration.from_pretrained(tmp_path / "resaved")
        assert torch.equal(resaved(**inputs).logits, logits)


def test_graft_into_clip_llava(clip_llava_dir, grafted_dir, uniflow_dir, tokenizer, tmp_path):
    """The legacy key layout (what transformers writes for LLaVA)."""
    with safe_open(str(clip_llava_dir / "model.safetensors"), "pt") as weights:
        assert any(k.startswith("language_model.model.") for k in weights.keys())
    check_grafted(clip_llava_dir, grafted_dir, uniflow_dir, tokenizer, tmp_path)


def test_graft_module_layout_through_cli(tokenizer, uniflow_dir, tmp_path):
    """transformers 5's module key layout (model.language_model.*, lm_head.*), through `uniflow-hf graft-llava`."""
    from uniflow_hf.cli import main

    llava_dir = save_clip_llava(tmp_path / "llava", tokenizer, layout="module")
    with safe_open(str(llava_dir / "model.safetensors"), "pt") as weights:
        assert any(k.startswith("model.language_model.") for k in weights.keys())
    argv = ["graft-llava", "--llava", str(llava_dir), "--uniflow", str(uniflow_dir), "--output", str(tmp_path / "out")]
    assert main(argv) == 0
    check_grafted(llava_dir, tmp_path / "out", uniflow_dir, tokenizer, tmp_path)


def test_graft_options(tokenizer, uniflow_dir, tmp_path):
    from transformers import LlavaConfig

    from uniflow_hf.conversion_scripts.graft_uniflow_into_llava import graft_uniflow_into_llava

    llava_dir = save_clip_llava(tmp_path / "llava", tokenizer, hidden_size=TINY_CONFIG["hidden_size"])
    old = {legacy_to_module(k): v for k, v in read_safetensors_folder(llava_dir).items()}
    projector_keys = [k for k in old if "multi_modal_projector" in k]

    # A projector that fits is kept with --keep-projector, and re-initialised (seeded) otherwise.
    kept = graft_uniflow_into_llava(llava_dir, uniflow_dir, tmp_path / "kept", keep_projector=True)
    kept = read_safetensors_folder(kept)
    assert all(torch.equal(kept[k], old[k]) for k in projector_keys)
    fresh = [
        graft_uniflow_into_llava(llava_dir, uniflow_dir, tmp_path / f"s{i}", seed=seed, verify=False)
        for i, seed in enumerate((0, 0, 1))
    ]
    fresh = [read_safetensors_folder(folder) for folder in fresh]
    key = "model.multi_modal_projector.linear_1.weight"
    assert torch.equal(fresh[0][key], fresh[1][key]) and not torch.equal(fresh[0][key], fresh[2][key])
    assert not torch.equal(fresh[0][key], old[key])

    # Two feature layers double the projector's input: the old one cannot be kept.
    with pytest.raises(ValueError, match="does not fit"):
        graft_uniflow_into_llava(
            llava_dir, uniflow_dir, tmp_path / "x", keep_projector=True, vision_feature_layer=[-1, -2]
        )
    out = graft_uniflow_into_llava(
        llava_dir, uniflow_dir, tmp_path / "multi", vision_feature_layer=[0, -1], vision_feature_select_strategy="full"
    )
    config = LlavaConfig.from_pretrained(out)
    assert config.vision_feature_layer == [0, -1]
    assert (config.vision_feature_select_strategy, config.image_seq_length) == ("full", 17)
    assert read_safetensors_folder(out)[key].shape == (32, 2 * TINY_CONFIG["hidden_size"])

    # Latent tokens as features: the latent head comes from the UniFlowModel folder; vision_feature_layer is -1.
    out = graft_uniflow_into_llava(llava_dir, uniflow_dir, tmp_path / "latent", vision_feature_source="latent")
    assert LlavaConfig.from_pretrained(out).vision_feature_layer == -1
    written, uniflow = read_safetensors_folder(out), load_file(str(uniflow_dir / "model.safetensors"))
    assert torch.equal(written["model.vision_tower.latent_proj.fc2.weight"], uniflow["latent_proj.fc2.weight"])


def test_graft_rejects_bad_inputs(tokenizer, clip_llava_dir, uniflow_dir, tmp_path):
    from uniflow_hf.cli import main
    from uniflow_hf.conversion_scripts.graft_uniflow_into_llava import graft_uniflow_into_llava

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        graft_uniflow_into_llava(tmp_path / "empty", uniflow_dir, tmp_path / "out")
    with pytest.raises(ValueError, match="not a LLaVA checkpoint.*'uniflow'"):
        graft_uniflow_into_llava(uniflow_dir, uniflow_dir, tmp_path / "out")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((clip_llava_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no LLaVA weights"):
        graft_uniflow_into_llava(tmp_path / "no_weights", uniflow_dir, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="--uniflow"):
        graft_uniflow_into_llava(clip_llava_dir, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="does not index the 4 hidden states"):
        graft_uniflow_into_llava(clip_llava_dir, uniflow_dir, tmp_path / "out", vision_feature_layer=4)
    assert not (tmp_path / "out").exists()
    argv = ["graft-llava", "--llava", str(tmp_path / "empty"), "--uniflow", str(uniflow_dir)]
    assert main(argv + ["--output", str(tmp_path / "o")]) == 2


def test_image_token_mismatch_errors(tokenizer, grafted_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from uniflow_hf.llava import LlavaImageQACollator, build_llava_processor, check_image_tokens

    model = LlavaForConditionalGeneration.from_pretrained(grafted_dir).eval()
    processor = AutoProcessor.from_pretrained(grafted_dir)
    inputs = processor(images=images(1), text=[f"{IMAGE_TOKEN} a"], return_tensors="pt")
    input_ids = inputs["input_ids"][:, 1:]  # one image token short
    # LLaVA's own error names the token count but counts "features" times the LM width (16 x 32 = 512) ...
    with pytest.raises(ValueError, match="Image features and image tokens do not match, tokens: 15"):
        model(input_ids=input_ids, pixel_values=inputs["pixel_values"])
    # ... ours says what the counts are and what to do.
    with pytest.raises(ValueError, match=r"hold 15 image tokens .* give 16 features each .*build_llava_processor"):
        check_image_tokens(model.config, input_ids, inputs["pixel_values"])
    check_image_tokens(model.config, inputs["input_ids"], inputs["pixel_values"])
    # A processor that does not match the model ("full" keeps CLS, the model drops it) fails at collation.
    full = build_llava_processor(tokenizer, model.config.vision_config, "full")
    collator = LlavaImageQACollator(full, llava_config=model.config)
    with pytest.raises(ValueError, match="hold 17 image tokens .* give 16 features each"):
        collator([{"image": images(1)[0], "question": QUESTION, "answer": "red"}])

    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        build_llava_processor(tokenizer, model.config.vision_config, "cls")
    with pytest.raises(ValueError, match="patch_size"):
        build_llava_processor(tokenizer, processor.image_processor)
    plain = build_tokenizer()
    plain.image_token = "<img>"
    with pytest.raises(ValueError, match="does not hold the image token '<img>'"):
        build_llava_processor(plain, model.config.vision_config)


# ------------------------------------------------------------------------------------------------ fine-tuning
def test_collator_masks_prompt_and_padding(grafted_dir):
    from transformers import AutoProcessor

    from uniflow_hf.llava import LlavaImageQACollator

    processor = AutoProcessor.from_pretrained(grafted_dir)
    collator = LlavaImageQACollator(processor)
    rows = [
        {"image": images(1)[0], "question": QUESTION, "answer": "red"},
        {"image": images(1)[0], "question": "What ?", "answer": "a cat"},
    ]
    batch = collator(rows)
    tokenizer = processor.tokenizer
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    for ids, mask, labels, row in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], rows):
        answer = tokenizer.encode(" " + row["answer"], add_special_tokens=False) + [tokenizer.eos_token_id]
        length = int(mask.sum())
        assert labels[labels != -100].tolist() == answer == ids[length - len(answer) : length].tolist()
        assert (labels[:length - len(answer)] == -100).all() and (labels[length:] == -100).all()
        assert (ids[length:] == tokenizer.pad_token_id).all()
        assert (ids == processor.image_token_id).sum() == 16
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()  # the second row is padded

    prompts = collator.prompt_inputs(rows)
    assert (prompts["attention_mask"][:, -1] == 1).all()  # left-padded for generation
    with pytest.raises(ValueError, match="prompt_template"):
        LlavaImageQACollator(processor, prompt_template="{question}")
    with pytest.raises(KeyError, match="'answer'"):
        collator([{"image": rows[0]["image"], "question": QUESTION}])


def test_lora_targets_cannot_cross():
    from uniflow_hf.llava import lora_target_modules

    language_model, tower = lora_target_modules(True, False), lora_target_modules(False, True)
    both = lora_target_modules(True, True)
    lm_names = [f"model.language_model.layers.1.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    tower_names = ["model.vision_tower.encoder.layers.2.attn.qkv", "model.vision_tower.encoder.layers.0.attn.proj"]
    others = ["model.multi_modal_projector.linear_1", "model.language_model.layers.0.mlp.down_proj", "lm_head",
              "model.vision_tower.encoder.layers.0.mlp.fc1", "model.global_blocks.0.attn.qkv"]
    assert all(re.fullmatch(language_model, n) and not re.fullmatch(tower, n) for n in lm_names)
    assert all(re.fullmatch(tower, n) and not re.fullmatch(language_model, n) for n in tower_names)
    assert all(re.fullmatch(both, n) for n in lm_names + tower_names)
    assert not any(re.fullmatch(both, n) for n in others)
    with pytest.raises(ValueError, match="needs a target"):
        lora_target_modules(False, False)


def test_lora_finetune_reload_and_merge(grafted_dir, tmp_path):
    """>= 30 LoRA steps on a tiny image-QA set lower the loss; the adapter reloads to identical logits and merges
    to within 1e-4; only LoRA weights and the projector train."""
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration, TrainingArguments

    from uniflow_hf.llava import LlavaImageQACollator, build_lora_config, finetune_llava_lora, training_losses

    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(grafted_dir)
    model = LlavaForConditionalGeneration.from_pretrained(grafted_dir)
    dataset = Dataset.from_list(colour_rows())
    trainer = finetune_llava_lora(
        model,
        processor,
        dataset,
        TrainingArguments(
            output_dir=str(tmp_path / "adapter"), max_steps=30, learning_rate=3e-3, per_device_train_batch_size=4,
            logging_steps=1, save_strategy="no", disable_tqdm=True,
        ),
        lora_config=build_lora_config(rank=4, alpha=8, train_vision_tower=True),
    )
    losses = training_losses(trainer)
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])

    peft_model = trainer.model.eval().cpu()  # the Trainer takes a GPU when there is one; compare on the CPU
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "multi_modal_projector" in name for name in trainable)
    assert any("vision_tower" in name for name in trainable) and any("language_model" in name for name in trainable)

    batch = LlavaImageQACollator(processor)(colour_rows(1))
    batch.pop("labels")
    with torch.no_grad():
        adapted = peft_model(**batch).logits
        base = LlavaForConditionalGeneration.from_pretrained(grafted_dir).eval()
        base_logits = base(**batch).logits
        reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        assert torch.equal(reloaded(**batch).logits, adapted)
        assert not torch.allclose(base_logits, adapted)
        merged = reloaded.merge_and_unload()
        assert type(merged) is LlavaForConditionalGeneration
        torch.testing.assert_close(merged(**batch).logits, adapted, atol=1e-4, rtol=0)


def test_finetune_cli(grafted_dir, tmp_path, capsys):
    """`finetune-llava` takes the `TrainingArguments` options: it saves checkpoints at `--save-steps`, resumes from the
    latest with `--resume-from-checkpoint true` (training only the remaining steps), and writes the adapter and the
    merged model."""
    from datasets import Dataset
    from transformers import LlavaForConditionalGeneration

    from uniflow_hf.cli import main

    Dataset.from_list([{k: v for k, v in row.items() if k != "question"} for row in colour_rows(2)]).save_to_disk(
        str(tmp_path / "data")
    )
    argv = [
        "finetune-llava", "--model", str(grafted_dir), "--dataset", str(tmp_path / "data"), "--output-dir",
        str(tmp_path / "adapter"), "--question", QUESTION, "--per-device-train-batch-size", "1",
        "--gradient-accumulation-steps", "2", "--logging-steps", "1", "--save-steps", "1", "--report-to", "none",
        "--disable-tqdm", "true",
    ]
    assert main([*argv, "--max-steps", "2"]) == 0
    assert "over 2 logged steps" in capsys.readouterr().out
    assert sorted(path.name for path in (tmp_path / "adapter").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert main([*argv, "--max-steps", "3", "--resume-from-checkpoint", "true", "--merge-to", str(tmp_path / "merged")]) == 0
    printed = capsys.readouterr().out
    # steps 1-2 come from checkpoint-2 (their losses with its log history), only step 3 trains
    assert printed.count("'loss'") == 1 and "over 3 logged steps" in printed and "merged model saved to" in printed
    assert (tmp_path / "adapter" / "checkpoint-3").is_dir()
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] == ["multi_modal_projector"]
    merged = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name in merged.state_dict())

    assert main(argv[:5] + ["--max-steps", "1"]) == 2
    assert "--output-dir is required" in capsys.readouterr().err


def test_finetune_takes_training_arguments(grafted_dir, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from uniflow_hf.llava import finetune_llava_lora

    model = LlavaForConditionalGeneration.from_pretrained(grafted_dir)
    with pytest.raises(TypeError, match="`training_args` must be a transformers.TrainingArguments, got dict"):
        finetune_llava_lora(model, None, [], {"output_dir": str(tmp_path), "max_steps": 1})
