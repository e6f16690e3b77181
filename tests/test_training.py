"""Training UniFlow with the Hugging Face Trainer (`uniflow_hf.training`, `uniflow-hf train-tokenizer`): logged loss
parts, checkpoints without the teacher, resume, gradient checkpointing, LoRA, data pipeline errors, and a short
run on real photos."""

import json
import re
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, TINY_CONFIG, pretrained_tiny_model, training_args
from PIL import Image
from safetensors import safe_open
from transformers import CLIPVisionConfig, CLIPVisionModel, Trainer, default_data_collator

from uniflow_hf import UniFlowConfig, UniFlowImageProcessor, UniFlowModel
from uniflow_hf.cli import main as cli_main
from uniflow_hf.modeling.flow_matching import draw_flow_training_inputs
from uniflow_hf.training import (
    UniFlowImageTransform,
    UniFlowIterableTrainingDataset,
    UniFlowTrainer,
    UniFlowTrainingDataset,
    apply_lora,
    flow_loss_generators,
    lora_target_modules,
    train_tokenizer,
)


NUM_LAYERS = TINY_CONFIG["num_hidden_layers"]


def random_images(count, seed=0):
    """PIL images of assorted sizes and modes (RGB, L, RGBA, P)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        height, width = int(rng.integers(24, 64)), int(rng.integers(24, 64))
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        images.append(image.convert(("RGB", "L", "RGBA", "P")[i % 4]))
    return images


def image_dataset(count, seed=0, column="image"):
    return datasets.Dataset.from_dict({column: random_images(count, seed)}).cast_column(column, datasets.Image())


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return UniFlowModel(UniFlowConfig(**{**TINY_CONFIG, **overrides}))


def logged(trainer, key):
    return {entry["step"]: entry[key] for entry in trainer.state.log_history if key in entry}


# ------------------------------------------------------------------------------------------- train_tokenizer
def test_trainer_logs_parts_and_checkpoints_without_teacher(tmp_path):
    model = tiny_model()
    initial_encoder = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    args = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2)
    trainer = train_tokenizer(model, image_dataset(8), args, eval_dataset=image_dataset(4, seed=1))

    last = next(entry for entry in reversed(trainer.state.log_history) if "flow_loss" in entry)
    layer_weights = [last[f"distill_w/layer_{layer:02d}"] for layer in range(1, NUM_LAYERS + 1)]
    assert sum(layer_weights) == pytest.approx(1.0, abs=1e-5)
    assert 0 < last[f"distill_cos/layer_{NUM_LAYERS:02d}"] <= 1
    assert last["loss"] == pytest.approx(last["flow_loss"] + last["distillation_loss"], rel=1e-4)
    evaluation = next(entry for entry in trainer.state.log_history if "eval_loss" in entry)
    assert evaluation["eval_loss"] == pytest.approx(evaluation["eval_flow_loss"] + evaluation["eval_distillation_loss"], rel=1e-4)

    # the teacher is the starting encoder and stays so; the student moved
    for key, value in model.distillation_teacher.state_dict().items():
        torch.testing.assert_close(value, initial_encoder[key], rtol=0, atol=0)
    assert not torch.equal(model.vision_model.embeddings.patch_embedding.weight, initial_encoder["embeddings.patch_embedding.weight"])

    for folder in (tmp_path / "checkpoint-2", tmp_path):
        with safe_open(folder / "model.safetensors", "pt") as weights:
            keys = set(weights.keys())
        assert not any(key.startswith("distillation_teacher") for key in keys)
        assert (folder / "preprocessor_config.json").is_file()
        reloaded = UniFlowModel.from_pretrained(folder)
        for name, parameter in reloaded.state_dict().items():
            torch.testing.assert_close(parameter, model.state_dict()[name], rtol=0, atol=0)
    assert set(reloaded.state_dict()) == keys


@pytest.mark.parametrize("ablation", [{"freeze_encoder": True}, {"distillation_mode": "none"}])
def test_ablations_through_train_tokenizer(tmp_path, ablation):
    model = tiny_model(**ablation)
    encoder_before = {name: parameter.clone() for name, parameter in model.vision_model.named_parameters()}
    # 3 steps: the flow head's zero-initialised output layer, then its adaLN modulations, must move before any
    # gradient of the flow loss reaches the condition, and so the encoder
    trainer = train_tokenizer(model, image_dataset(4), training_args(tmp_path, max_steps=3), save_model=False)
    assert model.distillation_teacher is None
    assert "distillation_loss" not in trainer.state.log_history[0] and "flow_loss" in trainer.state.log_history[0]
    frozen = ablation.get("freeze_encoder", False)
    unchanged = all(torch.equal(encoder_before[n], p) for n, p in model.vision_model.named_parameters())
    assert unchanged == frozen
    assert all(p.requires_grad != frozen for p in model.vision_model.parameters())


def test_plain_hf_trainer_trains_it(tmp_path):
    """The stock Trainer trains the model on batches that carry the flow loss's draws (a loss when they are given)."""
    model = tiny_model()
    model.enable_distillation()
    before = model.flow_head.final_layer.linear.weight.clone()
    dataset = UniFlowTrainingDataset(image_dataset(4), model.config)

    def collate(rows):
        batch = default_data_collator(rows)
        generators = flow_loss_generators(batch.pop("draw_key"))
        noise, timesteps = draw_flow_training_inputs(model.config, len(rows), 16, generators)
        return {**batch, "noise": noise, "timesteps": timesteps}

    args = training_args(tmp_path, max_steps=1, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    trainer.train()
    assert logged(trainer, "loss")[1] > 0
    assert not torch.equal(before, model.flow_head.final_layer.linear.weight)


def test_resume_continues_like_an_unbroken_run(tmp_path):
    """Train 6 steps with a checkpoint every 3; a fresh model, dataset and trainer resuming from step 3 (in a
    scrambled global RNG state) log the same losses for steps 4-6 and end with the same weights."""
    args = dict(per_device_train_batch_size=2, max_steps=6, save_strategy="steps", save_steps=3)
    unbroken = train_tokenizer(tiny_model(), image_dataset(8), training_args(tmp_path / "a", **args), save_model=False)

    torch.manual_seed(1234)
    np.random.seed(1234)
    resumed = train_tokenizer(
        tiny_model(),
        image_dataset(8),
        training_args(tmp_path / "b", **args),
        resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"),
        save_model=False,
    )
    for key in ("loss", "flow_loss", "distillation_loss", "grad_norm"):
        expected, got = logged(unbroken, key), logged(resumed, key)
        assert sorted(got) == [1, 2, 3, 4, 5, 6]  # steps 1-3 come from the checkpoint's trainer_state.json
        for step in (4, 5, 6):
            assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-9), (key, step)
    for (name, a), b in zip(unbroken.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_a_stream_trains_as_the_map_style_dataset_read_in_order(tmp_path):
    """A `datasets.IterableDataset` (2 shards, 6 images) keys its draws by the running position in the stream: 4
    steps of batch 2 (one pass and a bit, so the second epoch reshuffles nothing but draws afresh) give the same
    losses and weights as the map-style dataset read in order; a resume from step 2 continues on them."""
    args = dict(per_device_train_batch_size=2, max_steps=4, train_sampling_strategy="sequential")
    images = image_dataset(6)
    in_order = train_tokenizer(tiny_model(), images, training_args(tmp_path / "map", **args), save_model=False)
    stream = images.to_iterable_dataset(num_shards=2)
    streamed = train_tokenizer(
        tiny_model(), stream, training_args(tmp_path / "stream", save_strategy="steps", save_steps=2, **args),
        save_model=False,
    )  # fmt: skip
    for key in ("loss", "flow_loss", "distillation_loss"):
        assert sorted(logged(streamed, key)) == [1, 2, 3, 4]
        assert logged(streamed, key) == pytest.approx(logged(in_order, key), rel=1e-5), key
    for (name, a), b in zip(in_order.model.named_parameters(), streamed.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)

    resumed = train_tokenizer(
        tiny_model(), images.to_iterable_dataset(num_shards=2), training_args(tmp_path / "resumed", **args),
        resume_from_checkpoint=str(tmp_path / "stream" / "checkpoint-2"), save_model=False,
    )  # fmt: skip
    for step in (3, 4):
        assert logged(resumed, "loss")[step] == pytest.approx(logged(streamed, "loss")[step], rel=1e-5)


def test_stream_positions_and_errors():
    config = UniFlowConfig(**TINY_CONFIG)
    stream = UniFlowIterableTrainingDataset(image_dataset(3).to_iterable_dataset(), config, seed=5)
    items = list(stream)
    rows = UniFlowTrainingDataset(image_dataset(3), config, seed=5)
    assert len(items) == 3 and all(torch.equal(items[i]["draw_key"], rows[i]["draw_key"]) for i in range(3))
    assert all(torch.equal(items[i]["pixel_values"], rows[i]["pixel_values"]) for i in range(3))
    stream.set_epoch(1)
    assert next(iter(stream))["draw_key"].tolist() == [5, 1, 0]
    with pytest.raises(TypeError, match="wrap it with `UniFlowIterableTrainingDataset`"):
        UniFlowTrainingDataset(image_dataset(2).to_iterable_dataset(), config)
    with pytest.raises(TypeError, match="Expected a `datasets.IterableDataset`"):
        UniFlowIterableTrainingDataset(image_dataset(2), config)
    with pytest.raises(ValueError, match="Sample 0 of the stream of the dataset has no 'image' column"):
        next(iter(UniFlowIterableTrainingDataset(datasets.IterableDataset.from_generator(lambda: iter([{"img": 1}])), config)))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model = tiny_model().train()
    model.enable_distillation()
    with torch.no_grad():
        for parameter in model.parameters():  # drift from the teacher; wake the zero-initialised flow-head layers
            parameter.add_(0.02 * torch.randn_like(parameter))
    inputs = dict(pixel_values=torch.randn(2, 3, 32, 32), noise=torch.randn(2, 16, 192), timesteps=1000 * torch.rand(2, 16))

    def loss_and_gradients():
        model.zero_grad()
        output = model(**inputs)
        output.loss.backward()
        return output.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, gradients = loss_and_gradients()
    calls = {"encoder": 0, "global": 0, "flow_head": 0}
    # the first sub-module of a block: a recomputation always replays it
    hooked = {"encoder": model.vision_model.encoder.layers[1].norm1, "global": model.global_blocks[0].norm1,
              "flow_head": model.flow_head.res_blocks[0].norm}
    for name, module in hooked.items():
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))

    model.gradient_checkpointing_enable()
    checkpointed_loss, checkpointed_gradients = loss_and_gradients()
    assert calls == {"encoder": 2, "global": 2, "flow_head": 2}  # forward, then the recomputation in backward
    assert model.distillation_teacher.encoder.layers[0].training is False  # the teacher is never checkpointed
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)
    assert checkpointed_gradients.keys() == gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


# ------------------------------------------------------------------------------------------------------- LoRA
def test_lora_targets():
    model = tiny_model()
    model.enable_distillation()
    names = [name for name, _ in model.named_modules()]
    matched = {target: {n for n in names if re.fullmatch(lora_target_modules(model, target), n)} for target in ("encoder", "decoder", "both")}
    assert "vision_model.encoder.layers.0.attn.qkv" in matched["encoder"]
    assert "vision_model.encoder.layers.2.mlp.fc2" in matched["encoder"]
    assert "flow_head.res_blocks.1.fc1" in matched["decoder"] and "global_blocks.0.attn.proj" in matched["decoder"]
    assert not any(n.startswith("distillation_teacher") or n.endswith("modulation") for n in matched["both"])
    assert not matched["encoder"] & matched["decoder"]
    assert matched["both"] == matched["encoder"] | matched["decoder"]
    assert len(matched["encoder"]) == 4 * NUM_LAYERS

    clip = UniFlowModel.from_encoder(
        CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)),
        latent_channels=8, num_global_blocks=1, global_num_attention_heads=4, num_flow_head_blocks=1,
    )
    pattern = lora_target_modules(clip, "encoder")
    clip_matched = {n for n, _ in clip.named_modules() if re.fullmatch(pattern, n)}
    assert "vision_model.encoder.layers.1.self_attn.q_proj" in clip_matched and len(clip_matched) == 2 * 6
    with pytest.raises(ValueError, match="`targets` must be one of"):
        lora_target_modules(model, "head")
    with pytest.raises(ValueError, match="Enable the distillation teacher before adding adapters"):
        train_tokenizer(apply_lora(tiny_model(), "decoder"), image_dataset(2), training_args("unused", max_steps=1))


def test_lora_finetuning_saves_reloads_and_merges(tmp_path):
    from peft import PeftModel

    model = pretrained_tiny_model()
    model.enable_distillation()
    peft_model = apply_lora(model, targets="both", r=4)
    args = training_args(tmp_path, max_steps=3, learning_rate=2e-2)
    trainer = train_tokenizer(peft_model, image_dataset(8), args)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert keys and all("lora_" in key and "distillation_teacher" not in key for key in keys)
    assert any("vision_model" in key for key in keys) and any("flow_head" in key for key in keys)

    pixel_values, noise = torch.randn(2, 3, 32, 32), torch.randn(2, 16, 192)
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(pixel_values, noise=noise).reconstruction
        untouched = pretrained_tiny_model().eval()(pixel_values, noise=noise).reconstruction
        reloaded = PeftModel.from_pretrained(pretrained_tiny_model(), tmp_path).eval()
        torch.testing.assert_close(reloaded(pixel_values, noise=noise).reconstruction, expected, rtol=0, atol=0)
        merged = trained.merge_and_unload().eval()
        assert isinstance(merged, UniFlowModel)
        torch.testing.assert_close(merged(pixel_values, noise=noise).reconstruction, expected, rtol=0, atol=1e-4)
    assert (expected - untouched).abs().max() > 1e-3  # the adapters did change the model


# ------------------------------------------------------------------------------------------------ data errors
def test_transform_augments_within_bounds():
    processor = UniFlowImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transform = UniFlowImageTransform(processor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    for seed in range(20):
        left, top, right, bottom = transform.random_crop_box(70, 50, torch.Generator().manual_seed(seed))
        assert 0 <= left < right <= 70 and 0 <= top < bottom <= 50
        assert 0.8 * 3500 * 0.99 <= (right - left) * (bottom - top) <= 3500
    views = [transform(image, torch.Generator().manual_seed(seed)) for seed in range(4)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert not torch.equal(views[0], views[1])
    torch.testing.assert_close(transform(image, torch.Generator().manual_seed(0)), views[0])
    plain = UniFlowImageTransform(processor, augment=False)(image)
    torch.testing.assert_close(plain, processor(image, return_tensors="pt").pixel_values[0])


def test_dataset_draws_depend_on_seed_epoch_and_index_only():
    """An item is its augmented image and the key (seed, epoch, index) of its flow loss's draws, both from that key."""
    config = UniFlowConfig(**TINY_CONFIG)
    dataset = UniFlowTrainingDataset(image_dataset(3), config, seed=5)
    item = dataset[1]
    assert item.keys() == {"pixel_values", "draw_key"} and item["pixel_values"].shape == (3, 32, 32)
    assert item["draw_key"].tolist() == [5, 0, 1]
    torch.manual_seed(99)  # the global RNG plays no part
    again = dataset[1]
    assert all(torch.equal(item[key], again[key]) for key in item)
    noise, timesteps = draw_flow_training_inputs(config, 1, 16, flow_loss_generators(item["draw_key"][None]))
    assert noise.shape == (1, 1, 16, 192) and ((timesteps >= 0) & (timesteps <= 1000)).all()
    assert torch.equal(draw_flow_training_inputs(config, 1, 16, flow_loss_generators(again["draw_key"][None]))[0], noise)
    assert not torch.equal(dataset[2]["pixel_values"], item["pixel_values"])
    dataset.set_epoch(1)
    assert dataset[1]["draw_key"].tolist() == [5, 1, 1]
    assert not torch.equal(dataset[1]["pixel_values"], item["pixel_values"])


def test_bad_datasets_give_clear_errors(tmp_path):
    config = UniFlowConfig(**TINY_CONFIG)
    with pytest.raises(ValueError, match=r"no column 'image'; its columns are \['picture'\]"):
        UniFlowTrainingDataset(image_dataset(2, column="picture"), config)
    with pytest.raises(ValueError, match="no column 'image'.*columns are"):
        train_tokenizer(tiny_model(), image_dataset(2, column="picture"), training_args(tmp_path, max_steps=1))

    rows = [
        np.zeros((20, 20, 2), dtype=np.uint8),  # two channels: neither gray, RGB nor RGBA
        np.zeros((0, 5, 3), dtype=np.uint8),  # empty
        np.full((8, 8, 3), 7.5, dtype=np.float32),  # float outside [0, 1]
        "photo.jpg",  # a path, not an image
        None,
    ]
    dataset = UniFlowTrainingDataset([{"image": row} for row in rows], config)
    for index in range(len(rows)):
        with pytest.raises(ValueError, match=rf"Row {index}, column 'image': cannot use it as an image: .+"):
            dataset[index]
    with pytest.raises(ValueError, match="has no 'image' column"):
        UniFlowTrainingDataset([{"img": rows[0]}], config)[0]

    odd_processor = UniFlowImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    with pytest.raises(ValueError, match="not a multiple of the model's patch size 8"):
        UniFlowTrainingDataset(image_dataset(2), config, processor=odd_processor)
    with pytest.raises(TypeError, match="pass one split"):
        UniFlowTrainingDataset(datasets.DatasetDict({"train": image_dataset(2)}), config)


# ------------------------------------------------------------------------------------------- sharded training
def test_fsdp2_example_config_wraps_each_no_split_layer():
    """examples/accelerate/fsdp2.yaml auto-wraps by the model's `_no_split_modules`: each names a class the model
    instantiates, and the policy accelerate builds from the config makes one FSDP unit of each such layer (student and
    teacher encoder layers, global blocks, flow head; in LLaVA, the tower's and the language model's layers). The
    sharded run itself needs GPUs (tests/test_cuda.py)."""
    import yaml
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    example = yaml.safe_load((REPO_ROOT / "examples" / "accelerate" / "fsdp2.yaml").read_text())["fsdp_config"]
    assert example["fsdp_version"] == 2 and "fsdp_transformer_layer_cls_to_wrap" not in example
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=example["fsdp_version"],
        auto_wrap_policy=example["fsdp_auto_wrap_policy"].lower(),
        reshard_after_forward=example["fsdp_reshard_after_forward"],
        state_dict_type=example["fsdp_state_dict_type"],
    )

    def wrapped_units(model):
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        return Counter(type(module).__name__ for module in model.modules() if policy(module))

    model = tiny_model()
    model.enable_distillation()
    assert set(model._no_split_modules) <= {type(module).__name__ for module in model.modules()}
    layers, blocks = TINY_CONFIG["num_hidden_layers"], TINY_CONFIG["num_global_blocks"]
    assert wrapped_units(model) == {
        "UniFlowEncoderLayer": 2 * layers, "UniFlowVisionEmbeddings": 2, "UniFlowGlobalBlock": blocks, "UniFlowFlowHead": 1,
    }  # fmt: skip

    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    llava = LlavaForConditionalGeneration(LlavaConfig(vision_config=UniFlowConfig(**TINY_CONFIG), text_config=text))
    assert wrapped_units(llava) == {"UniFlowEncoderLayer": layers, "UniFlowVisionEmbeddings": 1, "LlamaDecoderLayer": 2}


# --------------------------------------------------------------------------------------------------------- CLI
def write_image_folder(folder, count, seed=0):
    folder.mkdir(parents=True)
    for i, image in enumerate(random_images(count, seed)):
        image.convert("RGB").save(folder / f"{i}.png")
    return folder


def cli_common(output_dir, *extra):
    return ["train-tokenizer", "--output-dir", str(output_dir), "--use-cpu", "--report-to", "none", "--optim", "adamw_torch",
            "--per-device-train-batch-size", "2", "--logging-steps", "1", "--disable-tqdm", "true", *extra]


def test_cli_image_folder_gradient_checkpointing_and_resume(tmp_path, capsys):
    images = write_image_folder(tmp_path / "images", 6)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_CONFIG))
    output = tmp_path / "run"
    common = ["--dataset", str(images), "--config", str(config), "--gradient-checkpointing", "--save-steps", "2"]
    assert cli_main(cli_common(output, *common, "--max-steps", "2")) == 0
    assert (output / "checkpoint-2" / "model.safetensors").is_file()
    assert cli_main(cli_common(output, *common, "--max-steps", "3", "--resume-from-checkpoint", str(output / "checkpoint-2"))) == 0
    state = json.loads((output / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [entry["step"] for entry in state["log_history"] if "flow_loss" in entry] == [1, 2, 3]
    model = UniFlowModel.from_pretrained(output)
    assert model.config.hidden_size == TINY_CONFIG["hidden_size"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3


def test_cli_saved_dataset_init_from_eval_split_and_lora(tmp_path, capsys):
    datasets.DatasetDict({"train": image_dataset(4, column="img"), "validation": image_dataset(2, seed=3, column="img")}).save_to_disk(tmp_path / "data")
    start = tmp_path / "start"
    tiny_model().save_pretrained(start)
    UniFlowImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(start)
    output = tmp_path / "lora"
    arguments = ["--dataset", str(tmp_path / "data"), "--image-column", "img", "--init-from", str(start), "--eval-split",
                 "validation", "--eval-strategy", "steps", "--eval-steps", "1", "--max-steps", "1", "--lora", "decoder",
                 "--config", '{"distillation_mode": "uniform"}']
    assert cli_main(cli_common(output, *arguments)) == 0
    adapter = json.loads((output / "adapter_config.json").read_text())
    assert re.fullmatch(adapter["target_modules"], "flow_head.res_blocks.0.fc2")
    assert (output / "preprocessor_config.json").is_file()
    history = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert history["output_dir"] == str(output)


def test_cli_streams_the_training_split(tmp_path, capsys):
    images = write_image_folder(tmp_path / "images", 4)
    arguments = ["--dataset", str(images), "--config", json.dumps(TINY_CONFIG), "--streaming"]
    assert cli_main(cli_common(tmp_path / "run", *arguments, "--max-steps", "2")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2
    assert UniFlowModel.from_pretrained(tmp_path / "run").config.hidden_size == TINY_CONFIG["hidden_size"]
    assert cli_main(cli_common(tmp_path / "run2", *arguments)) == 2  # a stream has no length: the run needs max_steps
    assert "max_steps" in capsys.readouterr().err


def test_cli_builds_around_a_vision_encoder(tmp_path):
    encoder_dir = tmp_path / "clip"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=32, patch_size=8)).save_pretrained(encoder_dir)
    decoder = {"latent_channels": 8, "num_global_blocks": 1, "global_num_attention_heads": 4, "num_flow_head_blocks": 1}
    images = write_image_folder(tmp_path / "images", 2)
    arguments = ["--dataset", str(images), "--encoder", str(encoder_dir), "--config", json.dumps(decoder), "--max-steps", "1"]
    assert cli_main(cli_common(tmp_path / "run", *arguments)) == 0
    model = UniFlowModel.from_pretrained(tmp_path / "run")
    assert model.config.encoder_config.model_type == "clip_vision_model" and model.config.latent_channels == 8


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--image-column", "picture"], r"no column 'picture'; its columns are \['image'\]"),
        (["--bf16"], "not supported for UniFlow training on CPU"),
        (["--lora", "head"], "--lora must be one of"),
        (["--config", "not-a-file.json"], "neither a JSON file nor an inline JSON object"),
    ],
)
def test_cli_errors(tmp_path, capsys, arguments, message):
    images = write_image_folder(tmp_path / "images", 2)
    config = ["--config", json.dumps(TINY_CONFIG)] if "--config" not in arguments else []
    code = cli_main(cli_common(tmp_path / "run", "--dataset", str(images), "--max-steps", "1", *config, *arguments))
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_requires_output_dir_and_a_model(tmp_path, capsys):
    images = str(write_image_folder(tmp_path / "images", 2))
    assert cli_main(["train-tokenizer", "--dataset", images, "--config", json.dumps(TINY_CONFIG)]) == 2
    assert "--output-dir is required" in capsys.readouterr().err
    assert cli_main(["train-tokenizer", "--dataset", images, "--output-dir", str(tmp_path / "run"), "--use-cpu"]) == 2
    assert "Pass --init-from DIR" in capsys.readouterr().err


def test_cli_reaches_every_training_argument(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train-tokenizer", "--help"])
    text = capsys.readouterr().out
    for option in ("--lr-scheduler-type", "--gradient-checkpointing", "--resume-from-checkpoint", "--ddp-backend",
                   "--dataloader-num-workers", "--image-column", "--init-from", "--lora"):
        assert option in text


# ----------------------------------------------------------------------------------------------- real photos
def photo_crops(count_per_photo=6, size=96, seed=0):
    from skimage import data

    rng = np.random.default_rng(seed)
    crops = []
    for photo in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.camera()):
        height, width = photo.shape[:2]
        for _ in range(count_per_photo):
            top, left = rng.integers(0, height - size), rng.integers(0, width - size)
            crops.append(Image.fromarray(photo[top : top + size, left : left + size]))
    return datasets.Dataset.from_dict({"image": crops}).cast_column("image", datasets.Image())


def evaluate_reconstruction(model, dataset, teacher):
    """Flow loss on fixed draws, PSNR (dB) of the 1-step reconstruction, and the per-layer cosine between the
    model's encoder features and `teacher`'s."""
    from uniflow_hf.metrics import peak_signal_noise_ratio

    wrapped = UniFlowTrainingDataset(dataset, model.config, augment=False, seed=0)
    batch = default_data_collator([wrapped[i] for i in range(len(wrapped))])
    generators = flow_loss_generators(batch.pop("draw_key"))
    model.eval()
    with torch.no_grad():
        flow_loss = model(**batch, generator=generators, return_loss=True).flow_loss.item()
        reconstruction = model.reconstruct(batch["pixel_values"], generator=torch.Generator().manual_seed(0), num_inference_steps=1)
        processor = wrapped.transform.processor
        psnr = peak_signal_noise_ratio(processor.postprocess(reconstruction, "pt"), processor.postprocess(batch["pixel_values"], "pt"))
        student = model.vision_model(batch["pixel_values"], output_hidden_states=True).hidden_states[1:]
        reference = teacher(batch["pixel_values"], output_hidden_states=True).hidden_states[1:]
        cosine = [F.cosine_similarity(s, t, dim=-1).mean().item() for s, t in zip(student, reference)]
    return flow_loss, psnr.mean().item(), cosine


@pytest.mark.slow
def test_short_run_on_real_photos(tmp_path):
    """200 steps on crops of scikit-image's photos lower the flow loss and raise the 1-step PSNR; with the
    self-distillation the encoder stays close to where it started, without it it drifts away. (After 100 steps the
    PSNR gain still depends on the draws: -0.04 to +2.5 dB over eight draw keys; after 200, +4.4 and +5.7 dB for
    the two keys that gained least.)"""
    photos = photo_crops()
    # a flow head wider than a pixel patch (3·8·8 = 192), as in the release (1024 vs 588), so that 1 step can denoise
    start = dict(flow_head_width=256)
    teacher = tiny_model(**start).vision_model.eval()  # the starting encoder of both runs
    args = training_args(tmp_path, per_device_train_batch_size=8, max_steps=200, learning_rate=6e-3, warmup_steps=10, logging_steps=50)
    results = {}
    for distillation in (True, False):
        model = tiny_model(**start)
        before = evaluate_reconstruction(model, photos, teacher)
        train_tokenizer(model, photos, args, distillation=distillation, save_model=False)
        results[distillation] = before, evaluate_reconstruction(model, photos, teacher)
        (flow_before, psnr_before, _), (flow_after, psnr_after, cosine) = results[distillation]
        print(f"distillation={distillation}: flow loss {flow_before:.3f} -> {flow_after:.3f}, 1-step PSNR "
              f"{psnr_before:.2f} -> {psnr_after:.2f} dB, cosine to the starting encoder per layer "
              f"{[round(c, 4) for c in cosine]}")

    (flow_before, psnr_before, _), (flow_after, psnr_after, cosine) = results[True]
    assert flow_after < 0.7 * flow_before
    assert psnr_after > psnr_before + 1.0
    assert min(cosine) > 0.95
    undistilled_cosine = results[False][1][2]
    assert sum(undistilled_cosine) / len(undistilled_cosine) < sum(cosine) / len(cosine) - 0.1


def test_enable_distillation_with_an_explicit_teacher(tiny_config):
    """Continuing an adapted model distils against the original encoder, not a snapshot of the adapted one."""
    from uniflow_hf import UniFlowModel

    torch.manual_seed(0)
    original = UniFlowModel(tiny_config)
    adapted = UniFlowModel(tiny_config)
    adapted.enable_distillation(teacher=original.vision_model)
    teacher_state = adapted.distillation_teacher.state_dict()
    assert all(torch.equal(teacher_state[k], v) for k, v in original.vision_model.state_dict().items())
    assert not any(torch.equal(teacher_state[k], v) for k, v in adapted.vision_model.state_dict().items() if v.ndim > 1)
    assert not any(p.requires_grad for p in adapted.distillation_teacher.parameters())
    assert adapted.distillation_teacher is not original.vision_model  # a frozen copy


def trained_timesteps(tmp_path, **config):
    """The flow times the flow head sees in one `UniFlowTrainer` loss on 40 images."""
    model = tiny_model(**config)
    dataset = UniFlowTrainingDataset(image_dataset(40), model.config, augment=False)
    seen = []
    model.flow_head.time_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    trainer = UniFlowTrainer(model=model, args=training_args(tmp_path))
    trainer.compute_loss(model, default_data_collator([dataset[i] for i in range(len(dataset))]))
    return seen[0]


def test_training_draws_follow_the_model_config(tmp_path):
    """The training step draws the flow times the model's config asks for (issue 37: it used default settings, so a
    logit-normal at mean -2 trained at a median timestep near 500 instead of about 119)."""
    timesteps = trained_timesteps(
        tmp_path, flow_timestep_distribution="lognormal", flow_timestep_logit_mean=-2.0, flow_timestep_logit_std=1.0
    )
    median = 1000 * torch.sigmoid(torch.tensor(-2.0))  # the logit-normal's median: 119.2
    assert abs(timesteps.median().item() - median.item()) < 25
    uniform_t = trained_timesteps(tmp_path, flow_timestep_distribution="uniform")
    assert abs(uniform_t.mean().item() - 500) < 40 and uniform_t.min() < 50 and uniform_t.max() > 950


def test_train_tokenizer_with_two_draws_per_token(tmp_path):
    """`flow_samples_per_token=2`: the step draws (2, N, ...) per image and training runs (it crashed)."""
    model = tiny_model(flow_samples_per_token=2)
    noise, timesteps = draw_flow_training_inputs(model.config, 3, 16, flow_loss_generators(torch.zeros(3, 3).long()))
    assert noise.shape == (3, 2, 16, 192) and timesteps.shape == (3, 2, 16)
    before = model.flow_head.final_layer.linear.weight.clone()
    trainer = train_tokenizer(model, image_dataset(4), training_args(tmp_path, max_steps=2), save_model=False)
    assert all(loss > 0 for loss in logged(trainer, "loss").values())
    assert not torch.equal(before, model.flow_head.final_layer.linear.weight)
