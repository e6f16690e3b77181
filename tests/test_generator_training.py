"""Training the class-conditional latent generator: the saved pipeline, the latent statistics, label dropout, the
latent cache, checkpoint and resume, the `train-generator` command, and (at tiny scale) that it learns to generate
latents of the requested class. Multi-process training: test_generator_distributed.py."""

import copy
import itertools
import json
import os
import shutil
from unittest import mock

import datasets
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from PIL import Image

from uniflow_hf import UniFlowClassConditionalPipeline, UniFlowFlowMatchScheduler
from uniflow_hf.cli import main as cli_main
from uniflow_hf.generator_training import GeneratorTrainingArguments, latent_statistics, train_generator
from uniflow_hf.pipelines.pipeline_uniflow_utils import default_image_processor


TINY_DIT = dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, patch_size=1)
CLASS_NAMES = ["red", "hstripes", "vstripes"]


def synthetic_images(class_id: int, count: int, rng: np.random.Generator, size: int = 32) -> list[np.ndarray]:
    """Very distinct classes: solid red, horizontal stripes, vertical blue stripes; random brightness and noise."""
    images = []
    for _ in range(count):
        image = np.zeros((size, size, 3))
        brightness = rng.uniform(0.6, 1.0)
        if class_id == 0:
            image[..., 0] = brightness
        elif class_id == 1:
            image[0::4], image[1::4] = brightness, brightness
        else:
            image[:, 0::4, 2], image[:, 1::4, 2] = brightness, brightness
        image += rng.normal(0, 0.05, image.shape)
        images.append((np.clip(image, 0, 1) * 255).astype(np.uint8))
    return images


def synthetic_dataset(per_class: int, seed: int = 0, class_label: bool = True) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for class_id in range(len(CLASS_NAMES)):
        images += synthetic_images(class_id, per_class, rng)
        labels += [class_id] * per_class
    label_feature = datasets.ClassLabel(names=CLASS_NAMES) if class_label else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


_RUNS = {"folder": None, "numbers": itertools.count()}


@pytest.fixture(autouse=True)
def runs_folder(tmp_path_factory):
    """Where `generator_args` puts the runs given no `output_dir`: a new folder per test."""
    _RUNS["folder"] = tmp_path_factory.mktemp("runs")


def generator_args(output_dir=None, **overrides) -> GeneratorTrainingArguments:
    """CPU `GeneratorTrainingArguments` for the tiny tests: quiet, no checkpoints, one step of 4 samples by default,
    in a new `output_dir` (so a new latent cache) unless given."""
    if output_dir is None:
        output_dir = _RUNS["folder"] / f"run{next(_RUNS['numbers'])}"
    values = dict(
        output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=0, max_steps=1, per_device_train_batch_size=4,
    )
    return GeneratorTrainingArguments(**{**values, **overrides})


def encode_dataset(tokenizer, dataset) -> torch.Tensor:
    """The latents (images, tokens, channels) of every image of `dataset`, encoded here in one batch."""
    pixel_values = default_image_processor(tokenizer)(list(dataset["image"]), return_tensors="pt").pixel_values
    with torch.no_grad():
        return tokenizer.encode(pixel_values).float()


def train(tokenizer, dataset, transformer=None, **overrides):
    """`train_generator` with `generator_args(**overrides)`."""
    return train_generator(tokenizer, dataset, generator_args(**overrides), transformer=transformer)


def spy_on_dit_forward():
    """Patch `DiTTransformer2DModel.forward` with a mock that records each call and still runs the real forward."""
    return mock.patch.object(
        DiTTransformer2DModel, "forward", autospec=True, side_effect=DiTTransformer2DModel.forward
    )


def test_train_generator_saves_a_complete_pipeline(tiny_model, tmp_path):
    dataset = synthetic_dataset(per_class=3)
    kwargs = dict(max_steps=3, seed=1, transformer_kwargs=TINY_DIT, ema_decay=0.9)
    result = train(tiny_model, dataset, output_dir=tmp_path, **kwargs)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert train(tiny_model, dataset, **kwargs).losses == result.losses  # seeded

    pipeline = DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(pipeline, UniFlowClassConditionalPipeline)
    assert pipeline.config.id2label == dict(enumerate(CLASS_NAMES))
    mean, std = latent_statistics(encode_dataset(tiny_model, dataset))
    assert pipeline.config.latent_mean == pytest.approx(mean, abs=1e-6)
    assert pipeline.config.latent_std == pytest.approx(std, abs=1e-6)
    config = pipeline.transformer.config
    assert (config.in_channels, config.out_channels, config.sample_size, config.num_embeds_ada_norm) == (8, 8, 4, 3)
    assert not pipeline.transformer.training
    # the built-in label dropout of diffusers' DiT is back to its default for whoever trains it next
    assert {m.dropout_prob for m in pipeline.transformer.modules() if isinstance(m, LabelEmbedding)} == {0.1}
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline("vstripes", num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (1, 32, 32, 3)


def test_ema_saves_the_average_and_leaves_the_training_alone(tiny_model):
    dataset = synthetic_dataset(per_class=2)
    kwargs = dict(max_steps=4, seed=3, transformer_kwargs=TINY_DIT)
    plain = train(tiny_model, dataset, **kwargs)
    averaged = train(tiny_model, dataset, ema_decay=0.5, **kwargs)
    assert averaged.losses == plain.losses  # the average is only what gets saved
    plain_weights = plain.pipeline.transformer.state_dict()
    averaged_weights = averaged.pipeline.transformer.state_dict()
    changed = [name for name in plain_weights if not torch.equal(plain_weights[name], averaged_weights[name])]
    assert "proj_out_2.weight" in changed


def test_label_dropout_goes_to_the_null_class(tiny_model):
    dataset = synthetic_dataset(per_class=4)
    with (
        spy_on_dit_forward() as spy,
        mock.patch.object(LabelEmbedding, "token_drop") as builtin_dropout,
    ):
        result = train(
            tiny_model, dataset, max_steps=8, per_device_train_batch_size=12, label_dropout=0.5,
            transformer_kwargs=TINY_DIT,
        )
    builtin_dropout.assert_not_called()
    # the saved DiT's own dropout is the training's, for whoever trains it next
    assert {m.dropout_prob for m in result.pipeline.transformer.modules() if isinstance(m, LabelEmbedding)} == {0.5}
    labels = torch.cat([call.kwargs["class_labels"] for call in spy.call_args_list])
    assert labels.tolist().count(3) == pytest.approx(48, abs=16)  # half of 96, the null id being 3
    assert set(labels.tolist()) == {0, 1, 2, 3}
    # every epoch visits every image once: without dropout, the labels of each epoch are the dataset's
    with spy_on_dit_forward() as spy:
        train(
            tiny_model, dataset, max_steps=2, per_device_train_batch_size=12, label_dropout=0.0,
            transformer_kwargs=TINY_DIT,
        )
    for call in spy.call_args_list:
        assert sorted(call.kwargs["class_labels"].tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_integer_labels_and_errors(tiny_model):
    dataset = synthetic_dataset(per_class=1, class_label=False)
    result = train(tiny_model, dataset, per_device_train_batch_size=2, transformer_kwargs=TINY_DIT)
    assert result.pipeline.config.id2label == {0: "0", 1: "1", 2: "2"}
    with pytest.raises(ValueError, match="No image column 'pixels'"):
        train(tiny_model, dataset, image_column="pixels")
    with pytest.raises(ValueError, match="No label column 'class'"):
        train(tiny_model, dataset, label_column="class")
    with pytest.raises(ValueError, match="follow from the tokenizer"):
        train(tiny_model, dataset, transformer_kwargs={"in_channels": 4})
    with pytest.raises(TypeError, match="`args` must be GeneratorTrainingArguments"):
        train_generator(tiny_model, dataset, generator_args().to_dict())
    # the settings are checked when the arguments are made, before any data or model loads
    for settings, message in [
        (dict(label_dropout=1.0), "label_dropout"),
        (dict(solver="rk4"), "`solver` must be 'euler' or 'heun'"),
        (dict(guidance_scale=-1), "`guidance_scale` must be a number >= 0"),
        (dict(guidance_interval=[0.8, 0.2]), "0 <= t_start <= t_end <= 1"),
        (dict(ema_decay=1.0), r"`ema_decay` must be in \(0, 1\)"),
        (dict(transformer_kwargs="{not json"), "`transformer_kwargs` is not valid JSON"),
        (dict(global_batch_size=0), "`global_batch_size` must be a positive integer"),
        (dict(timestep_logit_std=0.0), "`timestep_logit_std` must be positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            generator_args(**settings)


def training_timesteps(tiny_model, **kwargs) -> torch.Tensor:
    """The flow times (1000 t) the DiT was trained at in 8 steps of 12 samples."""
    with spy_on_dit_forward() as spy:
        train(
            tiny_model, synthetic_dataset(per_class=4), max_steps=8, per_device_train_batch_size=12,
            transformer_kwargs=TINY_DIT, **kwargs,
        )
    return torch.cat([call.kwargs["timestep"] for call in spy.call_args_list])


def test_training_flow_times_follow_the_timestep_settings(tiny_model):
    default = training_timesteps(tiny_model)
    assert len(default) == 96 and 0.3 < (default < 500).float().mean() < 0.7  # the release's, centred at t = 0.5
    release = UniFlowFlowMatchScheduler().config
    same = dict(timestep_distribution=release.timestep_distribution, timestep_logit_mean=release.timestep_logit_mean)
    assert torch.equal(training_timesteps(tiny_model, **same), default)
    # a logit-normal at logit 3 (t = 0.95), std 0.3: every time within 4 std of it, near the data end
    near_data = dict(timestep_distribution="lognormal", timestep_logit_mean=3.0, timestep_logit_std=0.3)
    skewed = training_timesteps(tiny_model, **near_data)
    assert skewed.min() > 1000 * torch.sigmoid(torch.tensor(1.8)) and skewed.max() < 1000 * torch.sigmoid(torch.tensor(4.2))


def learning_rates_of_training(tiny_model, **kwargs) -> list[float]:
    """The learning rate of each optimisation step of a 4-step training at base rate 1e-3."""
    seen, step = [], torch.optim.AdamW.step

    def record(optimizer, *args, **kw):
        seen.append(optimizer.param_groups[0]["lr"])
        return step(optimizer, *args, **kw)

    with mock.patch.object(torch.optim.AdamW, "step", autospec=True, side_effect=record):
        train(
            tiny_model, synthetic_dataset(per_class=2), max_steps=4, learning_rate=1e-3, optim="adamw_torch",
            transformer_kwargs=TINY_DIT, **kwargs,
        )
    return seen


def test_learning_rate_schedules(tiny_model):
    assert learning_rates_of_training(tiny_model) == pytest.approx([1e-3] * 4)  # constant by default
    assert learning_rates_of_training(tiny_model, lr_scheduler_type="linear") == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    cosine = [1e-3 * 0.5 * (1 + np.cos(np.pi * step / 4)) for step in range(4)]
    assert learning_rates_of_training(tiny_model, lr_scheduler_type="cosine") == pytest.approx(cosine)
    warmed = learning_rates_of_training(tiny_model, lr_scheduler_type="linear", warmup_steps=2)
    assert warmed == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])

    with pytest.raises(ValueError, match="plateau is not a valid SchedulerType"):
        generator_args(lr_scheduler_type="plateau")
    with pytest.raises(ValueError, match="use 'constant_with_warmup'"):
        generator_args(warmup_steps=1, max_steps=4)
    with pytest.raises(ValueError, match=r"`warmup_steps` \(4\) must be below the number of steps \(4\)"):
        train(tiny_model, synthetic_dataset(per_class=1), lr_scheduler_type="linear", warmup_steps=4, max_steps=4)


def test_training_continues_from_a_saved_generator(tiny_model, tmp_path):
    """`init_generator` (a pipeline folder, a transformer folder) or `transformer` (a module) starts from those
    weights: at learning rate 0 they come out unchanged, at a positive one they move on from there; mismatches are
    refused."""
    dataset = synthetic_dataset(per_class=2)
    saved_dir = tmp_path / "first"
    first = train(tiny_model, dataset, output_dir=saved_dir, max_steps=2, transformer_kwargs=TINY_DIT)
    saved = {k: v.clone() for k, v in first.pipeline.transformer.state_dict().items()}
    for source in (saved_dir, saved_dir / "transformer"):
        kept = train(tiny_model, dataset, init_generator=str(source), learning_rate=0.0)
        assert all(torch.equal(v, saved[k]) for k, v in kept.pipeline.transformer.state_dict().items())
    moved = train(tiny_model, dataset, init_generator=str(saved_dir), seed=1)
    fresh = train(tiny_model, dataset, seed=1, transformer_kwargs=TINY_DIT)
    assert moved.losses != fresh.losses  # it started from the saved weights, not from a new DiT
    assert not all(torch.equal(v, saved[k]) for k, v in moved.pipeline.transformer.state_dict().items())

    with pytest.raises(ValueError, match="`transformer_kwargs` size a new DiT"):
        generator_args(init_generator=str(saved_dir), transformer_kwargs=TINY_DIT)
    with pytest.raises(ValueError, match="not both"):
        train(tiny_model, dataset, first.pipeline.transformer, init_generator=str(saved_dir))
    with pytest.raises(ValueError, match="holds no DiT"):
        train(tiny_model, dataset, init_generator=str(saved_dir / "tokenizer"))
    two_classes = synthetic_dataset(per_class=2).filter(lambda row: row["label"] < 2)
    two_classes = two_classes.cast_column("label", datasets.ClassLabel(names=CLASS_NAMES[:2]))
    with pytest.raises(ValueError, match="'num_embeds_ada_norm': 3.*'num_embeds_ada_norm': 2"):
        train(tiny_model, two_classes, first.pipeline.transformer)


def test_resume_continues_on_the_same_losses(tiny_model, tmp_path):
    """A run killed after its step-2 checkpoint (mid-epoch: 6 images, 3 steps of 2) and resumed from there ends as
    the straight 4-step run: the same losses at steps 3 and 4 and the same saved (averaged) weights. The resumed run
    reads the samples of steps 3 and 4 (not those of 1 and 2 again), and its learning-rate schedule, AdamW moments
    and weight average go on."""
    dataset = synthetic_dataset(per_class=2)
    kwargs = dict(
        max_steps=4, transformer_kwargs=TINY_DIT, ema_decay=0.7, lr_scheduler_type="linear", save_strategy="steps",
        save_steps=2, per_device_train_batch_size=2, latent_cache_dir=str(tmp_path / "cache"),
    )
    straight = train(tiny_model, dataset, output_dir=tmp_path / "straight", **kwargs)
    assert sorted(os.listdir(tmp_path / "straight" / "checkpoint-2")) == sorted(
        ["ema.pt", "model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json",
         "training_args.bin"]
    )
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / "killed" / "checkpoint-2")
    args = generator_args(output_dir=tmp_path / "killed", **kwargs)
    resumed = train_generator(tiny_model, dataset, args, resume_from_checkpoint=True)  # the latest checkpoint
    assert len(straight.losses) == 4 and resumed.losses == pytest.approx(straight.losses[2:], rel=1e-6, abs=0)
    assert resumed.losses != pytest.approx(straight.losses[:2], rel=1e-3)  # not the first two steps again
    expected = straight.pipeline.transformer.state_dict()
    for name, weight in resumed.pipeline.transformer.state_dict().items():
        torch.testing.assert_close(weight, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match="No checkpoint to resume from"):
        args = generator_args(output_dir=tmp_path / "empty", **kwargs)
        train_generator(tiny_model, dataset, args, resume_from_checkpoint=True)


def test_latent_cache_is_reused_and_checked(tiny_model, tmp_path):
    """The latents go to an Arrow file on disk once (`Dataset.map`); a later run of the same tokenizer and dataset
    reads them without encoding; another tokenizer (weights or config) or another dataset gets a fresh cache file
    beside it; a folder that cannot be made or written is refused before encoding; a run stopped while encoding leaves no cache file behind."""
    from uniflow_hf import UniFlowModel

    dataset = synthetic_dataset(per_class=2)
    cache = tmp_path / "cache"
    kwargs = dict(latent_cache_dir=str(cache), transformer_kwargs=TINY_DIT, max_steps=2)
    first = train(tiny_model, dataset, **kwargs)
    (cache_file,) = cache.iterdir()
    assert cache_file.name.startswith("latents-") and cache_file.suffix == ".arrow"
    stored = datasets.Dataset.from_file(str(cache_file)).with_format("torch")[:]
    torch.testing.assert_close(stored["latents"], encode_dataset(tiny_model, dataset), rtol=0, atol=0)
    assert stored["label"].tolist() == list(dataset["label"])
    mean, std = latent_statistics(stored["latents"])
    config = first.pipeline.config
    assert config.latent_mean == pytest.approx(mean, abs=1e-6) and config.latent_std == pytest.approx(std, abs=1e-6)

    with mock.patch.object(UniFlowModel, "encode", side_effect=AssertionError("encoded again")):
        assert train(tiny_model, dataset, **kwargs).losses == first.losses
    other_weights, other_config = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(other_weights.parameters()).add_(1e-3)
    other_config.config.num_sampling_steps = 7
    for count, (other, other_dataset) in enumerate(
        [(other_weights, dataset), (other_config, dataset), (tiny_model, synthetic_dataset(per_class=2, seed=1))], 2
    ):
        with mock.patch.object(UniFlowModel, "encode", autospec=True, side_effect=UniFlowModel.encode) as encode:
            train(other, other_dataset, **kwargs)
        assert encode.call_count == 1 and len(list(cache.iterdir())) == count  # encoded into a file of its own
    assert datasets.Dataset.from_file(str(cache_file)).with_format("torch")[:]["latents"].equal(stored["latents"])

    with mock.patch("os.access", return_value=False):  # an unwritable folder (the tests may run as root)
        with pytest.raises(PermissionError, match=f"latent_cache_dir {tmp_path / 'new'}: the folder {tmp_path} is not"):
            train(tiny_model, dataset, **{**kwargs, "latent_cache_dir": str(tmp_path / "new")})
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match=f"latent_cache_dir .* lies below {tmp_path / 'a_file'}, which is a"):
        train(tiny_model, dataset, **{**kwargs, "latent_cache_dir": str(tmp_path / "a_file" / "cache")})
    with mock.patch.object(UniFlowModel, "encode", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            train(tiny_model, dataset, **{**kwargs, "latent_cache_dir": str(tmp_path / "new")})
    assert list((tmp_path / "new").iterdir()) == []  # datasets removed its temporary file
    assert train(tiny_model, dataset, **{**kwargs, "latent_cache_dir": str(tmp_path / "new")}).losses == first.losses
    assert sorted(os.listdir(tmp_path)) == ["a_file", "cache", "new"]


def test_mixed_precision_is_checked_against_the_processor(tiny_model):
    """--bf16 on a CPU without bfloat16 arithmetic is refused (it would run emulated); on one with it (mocked here)
    the DiT runs under bfloat16 autocast. fp16 needs a GPU."""
    dataset = synthetic_dataset(per_class=1)
    with mock.patch("uniflow_hf.generator_training.cpu_bf16_support", return_value=(False, "mocked")):
        with pytest.raises(ValueError, match="no bfloat16 arithmetic"):
            train(tiny_model, dataset, bf16=True, transformer_kwargs=TINY_DIT)
    with pytest.raises(ValueError, match="fp16 mixed precision needs a GPU"):
        train(tiny_model, dataset, fp16=True, transformer_kwargs=TINY_DIT)

    autocast, forward = [], DiTTransformer2DModel.forward

    def record(*args, **kwargs):
        autocast.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(*args, **kwargs)

    with (
        mock.patch("uniflow_hf.generator_training.cpu_bf16_support", return_value=(True, "mocked")),
        mock.patch.object(DiTTransformer2DModel, "forward", autospec=True, side_effect=record),
    ):
        result = train(tiny_model, dataset, bf16=True, transformer_kwargs=TINY_DIT, per_device_train_batch_size=2)
    assert autocast == [torch.bfloat16] and np.isfinite(result.losses).all()
    assert result.pipeline.transformer.dtype == torch.float32  # mixed precision: the weights stay float32


def test_generated_latents_are_recognised_as_their_class(tiny_model):
    """At tiny scale: a nearest-class-mean classifier fitted on the latents of real images recognises the latents
    generated for a class as that class, far above chance (1/3), while an untrained generator sits near chance.

    What this shows: the DiT learns the class-conditional distribution of the tokenizer's latents (conditioning,
    flow-matching loss, normalisation and sampling all fit together). What it does not show: image quality; the
    tokenizer is random, so decoded pixels are not judged."""
    dataset = synthetic_dataset(per_class=16)
    real = encode_dataset(tiny_model, dataset).flatten(1)
    labels = torch.tensor(list(dataset["label"]))
    class_means = torch.stack([real[labels == c].mean(0) for c in range(3)])
    requested = torch.tensor([0, 1, 2] * 10)

    def accuracy(num_train_steps: int) -> float:
        pipeline = train(
            tiny_model, dataset, max_steps=num_train_steps, per_device_train_batch_size=32, learning_rate=1e-3,
            seed=0, transformer_kwargs=dict(TINY_DIT, num_layers=2, attention_head_dim=16),
        ).pipeline
        pipeline.set_progress_bar_config(disable=True)
        latents = pipeline(
            requested.tolist(), guidance_scale=1.0, num_inference_steps=10, generator=torch.manual_seed(1),
            output_type="latent",
        ).images
        predicted = torch.cdist(latents.flatten(1).cpu(), class_means).argmin(1)
        return (predicted == requested).float().mean().item()

    assert accuracy(150) >= 0.9
    assert accuracy(1) < 0.6


def test_train_generator_command(tiny_model, tmp_path, monkeypatch, capsys):
    tokenizer_dir = tmp_path / "tokenizer"
    tiny_model.save_pretrained(tokenizer_dir)
    quiet = ["--use_cpu", "--report_to", "none", "--save_strategy", "no", "--logging_strategy", "no", "--disable_tqdm", "true"]

    def train(dataset_dir, output_dir, *extra):
        argv = ["train-generator", "--tokenizer", str(tokenizer_dir), "--dataset", str(dataset_dir), *quiet]
        argv += ["--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "4", *extra]
        return cli_main([*argv, "--transformer_kwargs", json.dumps(TINY_DIT)])

    # a `save_to_disk` DatasetDict
    datasets.DatasetDict({"train": synthetic_dataset(per_class=2)}).save_to_disk(tmp_path / "saved")
    sampling = ["--decoder-steps", "3", "--solver", "heun", "--euler_at_final", "--guidance_scale", "2",
                "--guidance_interval", "0.2", "1"]
    assert train(tmp_path / "saved", tmp_path / "generator", *sampling) == 0
    assert "Trained 2 steps" in capsys.readouterr().out
    pipeline = DiffusionPipeline.from_pretrained(tmp_path / "generator")
    assert pipeline.labels == {name: i for i, name in enumerate(CLASS_NAMES)}
    assert pipeline.config.decoder_num_inference_steps == 3
    assert pipeline.config.guidance_scale == 2.0 and pipeline.config.guidance_interval == [0.2, 1.0]
    assert pipeline.scheduler.config.solver == "heun" and pipeline.scheduler.order == 2
    assert pipeline.scheduler.config.euler_at_final
    assert "decoder_scheduler" not in pipeline.components  # the decoder samples as the tokenizer's `decode`

    # continuing from that pipeline's DiT (its size, not --transformer_kwargs), reusing the first run's latents
    argv = ["train-generator", "--tokenizer", str(tokenizer_dir), "--dataset", str(tmp_path / "saved"), "--seed", "1",
            "--output_dir", str(tmp_path / "continued"), "--max_steps", "1", "--per_device_train_batch_size", "4",
            "--latent_cache_dir", str(tmp_path / "generator" / "latent_cache"), "--overwrite_output_dir", *quiet]
    assert cli_main([*argv, "--init_generator", str(tmp_path / "generator"), "--learning_rate", "0"]) == 0
    continued = DiffusionPipeline.from_pretrained(tmp_path / "continued")
    for name, parameter in continued.transformer.state_dict().items():
        assert torch.equal(parameter, pipeline.transformer.state_dict()[name])
    assert not (tmp_path / "continued" / "latent_cache").exists()
    assert cli_main([*argv, "--init_generator", str(tmp_path / "generator"), "--transformer_kwargs", "{}"]) == 0
    assert cli_main([*argv, "--init_generator", str(tmp_path / "generator"), "--lr_scheduler_type", "linear"]) == 0
    assert cli_main([*argv, "--init_generator", str(tmp_path / "generator"), "--lr_scheduler_type", "step"]) == 2
    assert "step is not a valid SchedulerType" in capsys.readouterr().err
    assert cli_main([*argv, "--init_generator", str(tmp_path / "generator"), "--transformer_kwargs", json.dumps(TINY_DIT)]) == 2
    assert "`transformer_kwargs` size a new DiT" in capsys.readouterr().err

    # an imagefolder directory: one sub-folder per class
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for class_id, name in enumerate(["cat", "dog"]):
        (tmp_path / "folder" / name).mkdir(parents=True)
        Image.fromarray(synthetic_images(class_id, 1, rng)[0]).save(tmp_path / "folder" / name / "0.png")
    assert train(tmp_path / "folder", tmp_path / "from_folder", "--per_device_train_batch_size", "2") == 0
    from_folder = DiffusionPipeline.from_pretrained(tmp_path / "from_folder")
    assert from_folder.labels == {"cat": 0, "dog": 1} and from_folder.config.decoder_num_inference_steps is None
    assert from_folder.config.guidance_scale is None and from_folder.config.guidance_interval is None
    assert train(tmp_path / "saved", tmp_path / "unused", "--guidance_interval", "0.8", "0.2") == 2
    assert "0 <= t_start <= t_end <= 1" in capsys.readouterr().err

    # the training flow times (--timestep_*): all near the data end at logit mean 3, std 0.3
    near_data = ["--timestep_distribution", "lognormal", "--timestep_logit_mean", "3", "--timestep_logit_std", "0.3"]
    with spy_on_dit_forward() as spy:
        assert train(tmp_path / "saved", tmp_path / "near_data", *near_data) == 0
    timesteps = torch.cat([call.kwargs["timestep"] for call in spy.call_args_list])
    assert len(timesteps) == 8 and timesteps.min() > 1000 * torch.sigmoid(torch.tensor(1.8))
    assert train(tmp_path / "saved", tmp_path / "unused", "--timestep_uniform_fraction", "2") == 2
    assert "`timestep_uniform_fraction` must be in [0, 1], got 2.0" in capsys.readouterr().err
    with mock.patch("uniflow_hf.generator_training.cpu_bf16_support", return_value=(False, "mocked")):
        assert train(tmp_path / "saved", tmp_path / "unused", "--bf16") == 2
    assert "--bf16 would run emulated" in capsys.readouterr().err
    assert not (tmp_path / "unused").exists()

    assert train(tmp_path / "nowhere", tmp_path / "unused") == 2
    assert "does not exist" in capsys.readouterr().err
