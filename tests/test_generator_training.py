"""Training the class-conditional latent generator: the saved pipeline, the latent statistics, label dropout, the
`train-generator` command, and (at tiny scale) that it learns to generate latents of the requested class."""

import json
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
from uniflow_hf.generator_training import (
    deepen_generator_transformer, encode_dataset, latent_statistics, train_generator,
)


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


def spy_on_dit_forward():
    """Patch `DiTTransformer2DModel.forward` with a mock that records each call and still runs the real forward."""
    return mock.patch.object(
        DiTTransformer2DModel, "forward", autospec=True, side_effect=DiTTransformer2DModel.forward
    )


def test_train_generator_saves_a_complete_pipeline(tiny_model, tmp_path):
    dataset = synthetic_dataset(per_class=3)
    kwargs = dict(num_train_steps=3, batch_size=4, seed=1, transformer_kwargs=TINY_DIT, ema_decay=0.9, progress=False)
    result = train_generator(tiny_model, dataset, output_dir=tmp_path, **kwargs)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert train_generator(tiny_model, dataset, **kwargs).losses == result.losses  # seeded

    pipeline = DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(pipeline, UniFlowClassConditionalPipeline)
    assert pipeline.config.id2label == dict(enumerate(CLASS_NAMES))
    mean, std = latent_statistics(encode_dataset(tiny_model, dataset, "image"))
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
    kwargs = dict(num_train_steps=4, batch_size=4, seed=3, transformer_kwargs=TINY_DIT, progress=False)
    plain = train_generator(tiny_model, dataset, **kwargs)
    averaged = train_generator(tiny_model, dataset, ema_decay=0.5, **kwargs)
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
        train_generator(
            tiny_model, dataset, num_train_steps=8, batch_size=12, label_dropout=0.5, transformer_kwargs=TINY_DIT,
            progress=False,
        )
    builtin_dropout.assert_not_called()
    labels = torch.cat([call.kwargs["class_labels"] for call in spy.call_args_list])
    assert labels.tolist().count(3) == pytest.approx(48, abs=16)  # half of 96, the null id being 3
    assert set(labels.tolist()) == {0, 1, 2, 3}
    # every epoch visits every image once: without dropout, the labels of each epoch are the dataset's
    with spy_on_dit_forward() as spy:
        train_generator(
            tiny_model, dataset, num_train_steps=2, batch_size=12, label_dropout=0.0, transformer_kwargs=TINY_DIT,
            progress=False,
        )
    for call in spy.call_args_list:
        assert sorted(call.kwargs["class_labels"].tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_integer_labels_and_errors(tiny_model):
    dataset = synthetic_dataset(per_class=1, class_label=False)
    result = train_generator(
        tiny_model, dataset, num_train_steps=1, batch_size=2, transformer_kwargs=TINY_DIT, progress=False
    )
    assert result.pipeline.config.id2label == {0: "0", 1: "1", 2: "2"}
    with pytest.raises(ValueError, match="No image column 'pixels'"):
        train_generator(tiny_model, dataset, image_column="pixels", num_train_steps=1, progress=False)
    with pytest.raises(ValueError, match="No label column 'class'"):
        train_generator(tiny_model, dataset, label_column="class", num_train_steps=1, progress=False)
    with pytest.raises(ValueError, match="label_dropout"):
        train_generator(tiny_model, dataset, label_dropout=1.0, num_train_steps=1, progress=False)
    with pytest.raises(ValueError, match="`solver` must be 'euler' or 'heun'"):
        train_generator(tiny_model, dataset, solver="rk4", num_train_steps=1, progress=False)
    with pytest.raises(ValueError, match="`guidance_scale` must be a number >= 0"):
        train_generator(tiny_model, dataset, guidance_scale=-1, num_train_steps=1, progress=False)
    with pytest.raises(ValueError, match=r"`ema_decay` must be in \(0, 1\)"):
        train_generator(tiny_model, dataset, ema_decay=1.0, num_train_steps=1, progress=False)
    with pytest.raises(ValueError, match="follow from the tokenizer"):
        train_generator(tiny_model, dataset, transformer_kwargs={"in_channels": 4}, num_train_steps=1, progress=False)


def training_timesteps(tiny_model, **kwargs) -> torch.Tensor:
    """The flow times (1000 t) the DiT was trained at in 8 steps of 12 samples."""
    with spy_on_dit_forward() as spy:
        train_generator(
            tiny_model, synthetic_dataset(per_class=4), num_train_steps=8, batch_size=12, transformer_kwargs=TINY_DIT,
            progress=False, **kwargs,
        )
    return torch.cat([call.kwargs["timestep"] for call in spy.call_args_list])


def test_training_flow_times_come_from_the_noise_scheduler(tiny_model):
    default = training_timesteps(tiny_model)
    assert len(default) == 96 and 0.3 < (default < 500).float().mean() < 0.7  # the release's, centred at t = 0.5
    assert torch.equal(training_timesteps(tiny_model, noise_scheduler=UniFlowFlowMatchScheduler()), default)
    # a logit-normal at logit 3 (t = 0.95), std 0.3: every time within 4 std of it, near the data end
    near_data = UniFlowFlowMatchScheduler(training_timestep_distribution="lognormal", logit_mean=3.0, logit_std=0.3)
    skewed = training_timesteps(tiny_model, noise_scheduler=near_data)
    assert skewed.min() > 1000 * torch.sigmoid(torch.tensor(1.8)) and skewed.max() < 1000 * torch.sigmoid(torch.tensor(4.2))
    with pytest.raises(TypeError, match="`noise_scheduler` must be a UniFlowFlowMatchScheduler"):
        train_generator(tiny_model, synthetic_dataset(per_class=1), noise_scheduler="lognormal", progress=False)


def learning_rates_of_training(tiny_model, **kwargs) -> list[float]:
    """The learning rate of each optimisation step of a 4-step training at base rate 1e-3."""
    seen, step = [], torch.optim.AdamW.step

    def record(optimizer, *args, **kw):
        seen.append(optimizer.param_groups[0]["lr"])
        return step(optimizer, *args, **kw)

    with mock.patch.object(torch.optim.AdamW, "step", autospec=True, side_effect=record):
        train_generator(
            tiny_model, synthetic_dataset(per_class=2), num_train_steps=4, batch_size=4, learning_rate=1e-3,
            transformer_kwargs=TINY_DIT, progress=False, **kwargs,
        )
    return seen


def test_learning_rate_schedules(tiny_model):
    assert learning_rates_of_training(tiny_model) == pytest.approx([1e-3] * 4)  # constant by default
    assert learning_rates_of_training(tiny_model, lr_scheduler_type="linear") == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    cosine = [1e-3 * 0.5 * (1 + np.cos(np.pi * step / 4)) for step in range(4)]
    assert learning_rates_of_training(tiny_model, lr_scheduler_type="cosine") == pytest.approx(cosine)
    warmed = learning_rates_of_training(tiny_model, lr_scheduler_type="linear", warmup_steps=2)
    assert warmed == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])

    dataset = synthetic_dataset(per_class=1)
    with pytest.raises(ValueError, match="`lr_scheduler_type` must be one of constant, constant_with_warmup, linear, cosine"):
        train_generator(tiny_model, dataset, lr_scheduler_type="plateau", num_train_steps=1, progress=False)
    with pytest.raises(ValueError, match=r"`warmup_steps` must be an integer from 0 to num_train_steps - 1 \(3\)"):
        train_generator(tiny_model, dataset, lr_scheduler_type="linear", warmup_steps=4, num_train_steps=4, progress=False)
    with pytest.raises(ValueError, match="use 'constant_with_warmup'"):
        train_generator(tiny_model, dataset, warmup_steps=1, num_train_steps=4, progress=False)


def test_training_continues_from_a_saved_generator(tiny_model, tmp_path):
    """`init_transformer` (a pipeline folder, a transformer folder or a module) starts from those weights: at
    learning rate 0 they come out unchanged, at a positive one they move on from there; mismatches are refused."""
    dataset = synthetic_dataset(per_class=2)
    kwargs = dict(batch_size=4, progress=False)
    first = train_generator(tiny_model, dataset, output_dir=tmp_path, num_train_steps=2, transformer_kwargs=TINY_DIT, **kwargs)
    saved = {k: v.clone() for k, v in first.pipeline.transformer.state_dict().items()}
    for source in (tmp_path, tmp_path / "transformer"):
        kept = train_generator(tiny_model, dataset, init_transformer=source, num_train_steps=1, learning_rate=0.0, **kwargs)
        assert all(torch.equal(v, saved[k]) for k, v in kept.pipeline.transformer.state_dict().items())
    moved = train_generator(tiny_model, dataset, init_transformer=tmp_path, num_train_steps=1, seed=1, **kwargs)
    fresh = train_generator(tiny_model, dataset, num_train_steps=1, seed=1, transformer_kwargs=TINY_DIT, **kwargs)
    assert moved.losses != fresh.losses  # it started from the saved weights, not from a new DiT
    assert not all(torch.equal(v, saved[k]) for k, v in moved.pipeline.transformer.state_dict().items())

    with pytest.raises(ValueError, match="`transformer_kwargs` size a new DiT"):
        train_generator(tiny_model, dataset, init_transformer=tmp_path, transformer_kwargs=TINY_DIT, num_train_steps=1, **kwargs)
    with pytest.raises(ValueError, match="holds no DiT"):
        train_generator(tiny_model, dataset, init_transformer=tmp_path / "tokenizer", num_train_steps=1, **kwargs)
    two_classes = synthetic_dataset(per_class=2).filter(lambda row: row["label"] < 2)
    two_classes = two_classes.cast_column("label", datasets.ClassLabel(names=CLASS_NAMES[:2]))
    with pytest.raises(ValueError, match="'num_embeds_ada_norm': 3.*'num_embeds_ada_norm': 2"):
        train_generator(tiny_model, two_classes, init_transformer=first.pipeline.transformer, num_train_steps=1, **kwargs)


def random_dit(num_layers: int, seed: int = 0) -> DiTTransformer2DModel:
    """A tiny DiT whose every weight is random, adaLN-Zero gates included (so that no block is the identity)."""
    torch.manual_seed(seed)
    dit = DiTTransformer2DModel(
        in_channels=8, out_channels=8, sample_size=4, num_embeds_ada_norm=3, **dict(TINY_DIT, num_layers=num_layers)
    )
    with torch.no_grad():
        for parameter in dit.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape))
    return dit.eval()


def dit_velocity(dit, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(6, 8, 4, 4, generator=generator)
    timesteps = torch.tensor([0.0, 100.0, 333.3, 500.0, 875.5, 1000.0])
    with torch.no_grad():  # class 3 is the null class
        return dit(sample, timestep=timesteps, class_labels=torch.tensor([0, 1, 2, 3, 0, 3])).sample


@pytest.mark.parametrize("num_layers, num_new_layers, copied", [(6, 3, [1, 3, 5]), (3, 1, [2]), (2, 2, [0, 1])])
def test_deepened_dit_computes_what_it_did(num_layers, num_new_layers, copied):
    """The deepened DiT has the new blocks after the evenly spaced ones, as copies with closed gates: its output equals
    the original's, while the gates (and only they) tell a new block from the one it copies."""
    dit = random_dit(num_layers)
    before = {name: value.clone() for name, value in dit.state_dict().items()}
    deeper = deepen_generator_transformer(dit, num_new_layers)
    assert deeper.config.num_layers == len(deeper.transformer_blocks) == num_layers + num_new_layers
    torch.testing.assert_close(dit_velocity(deeper), dit_velocity(dit), rtol=0, atol=1e-6)
    assert dit_velocity(dit).abs().mean() > 0.1  # a real output, not one that trivially matches
    assert all(torch.equal(value, before[name]) for name, value in dit.state_dict().items())  # left as it was

    sources = [index for index in range(num_layers) for _ in range(2 if index in copied else 1)]
    dim = dit.inner_dim
    for position, source in enumerate(sources):
        block, original = deeper.transformer_blocks[position].state_dict(), dit.transformer_blocks[source].state_dict()
        is_copy = position > 0 and sources[position - 1] == source
        for name, value in block.items():
            if is_copy and name.startswith("norm1.linear."):
                gates = torch.cat([value[2 * dim : 3 * dim], value[5 * dim : 6 * dim]])
                assert torch.count_nonzero(gates) == 0
                torch.testing.assert_close(value[: 2 * dim], original[name][: 2 * dim], rtol=0, atol=0)
                torch.testing.assert_close(value[3 * dim : 5 * dim], original[name][3 * dim : 5 * dim], rtol=0, atol=0)
            else:
                assert torch.equal(value, original[name]), (position, name)
    # a block without its gates closed changes the output: the test above would notice a gate left open
    with torch.no_grad():
        deeper.transformer_blocks[sources.index(copied[0]) + 1].norm1.linear.bias[2 * dim] = 1.0
    assert not torch.allclose(dit_velocity(deeper), dit_velocity(dit), atol=1e-4)


def test_deepening_bad_inputs():
    dit = random_dit(2)
    for value in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            deepen_generator_transformer(dit, value)
    with pytest.raises(ValueError, match="At most 2 new blocks"):
        deepen_generator_transformer(dit, 3)


def test_training_continues_a_deepened_generator(tiny_model, tmp_path):
    """`add_layers` deepens the DiT to continue before training: at learning rate 0 it generates what the saved one
    generates; then training opens the new blocks' gates."""
    dataset = synthetic_dataset(per_class=2)
    kwargs = dict(batch_size=4, progress=False)
    first = train_generator(tiny_model, dataset, output_dir=tmp_path, num_train_steps=2, transformer_kwargs=TINY_DIT, **kwargs)
    kept = train_generator(tiny_model, dataset, init_transformer=tmp_path, add_layers=1, num_train_steps=1, learning_rate=0.0, **kwargs)
    assert kept.pipeline.transformer.config.num_layers == 2
    pipelines = (first.pipeline, kept.pipeline)
    for pipeline in pipelines:
        pipeline.set_progress_bar_config(disable=True)
    latents = [p([0, 1, 2], num_inference_steps=3, generator=torch.manual_seed(0), output_type="latent").images for p in pipelines]
    torch.testing.assert_close(latents[1], latents[0], rtol=0, atol=1e-6)

    trained = train_generator(tiny_model, dataset, init_transformer=tmp_path, add_layers=1, num_train_steps=2, seed=1, **kwargs)
    dim = trained.pipeline.transformer.inner_dim
    gate = trained.pipeline.transformer.transformer_blocks[1].norm1.linear.bias[2 * dim : 3 * dim]
    assert torch.count_nonzero(gate) > 0

    with pytest.raises(ValueError, match="`add_layers` deepens the DiT given as `init_transformer`"):
        train_generator(tiny_model, dataset, add_layers=1, num_train_steps=1, transformer_kwargs=TINY_DIT, **kwargs)
    with pytest.raises(ValueError, match="non-negative integer"):
        train_generator(tiny_model, dataset, init_transformer=tmp_path, add_layers=-1, num_train_steps=1, **kwargs)


def test_generated_latents_are_recognised_as_their_class(tiny_model):
    """At tiny scale: a nearest-class-mean classifier fitted on the latents of real images recognises the latents
    generated for a class as that class, far above chance (1/3), while an untrained generator sits near chance.

    What this shows: the DiT learns the class-conditional distribution of the tokenizer's latents (conditioning,
    flow-matching loss, normalisation and sampling all fit together). What it does not show: image quality; the
    tokenizer is random, so decoded pixels are not judged."""
    dataset = synthetic_dataset(per_class=16)
    real = encode_dataset(tiny_model, dataset, "image").flatten(1)
    labels = torch.tensor(list(dataset["label"]))
    class_means = torch.stack([real[labels == c].mean(0) for c in range(3)])
    requested = torch.tensor([0, 1, 2] * 10)

    def accuracy(num_train_steps: int) -> float:
        pipeline = train_generator(
            tiny_model, dataset, num_train_steps=num_train_steps, batch_size=32, learning_rate=1e-3, seed=0,
            transformer_kwargs=dict(TINY_DIT, num_layers=2, attention_head_dim=16), progress=False,
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

    def train(dataset_dir, output_dir, *extra):
        argv = ["train-generator", "--tokenizer", str(tokenizer_dir), "--dataset", str(dataset_dir)]
        argv += ["--output-dir", str(output_dir), "--num-train-steps", "2", "--batch-size", "4", *extra]
        return cli_main([*argv, "--transformer-kwargs", json.dumps(TINY_DIT)])

    # a `save_to_disk` DatasetDict
    datasets.DatasetDict({"train": synthetic_dataset(per_class=2)}).save_to_disk(tmp_path / "saved")
    sampling = ["--decoder-steps", "3", "--solver", "heun", "--euler-at-final", "--guidance-scale", "2",
                "--guidance-interval", "0.2", "1"]
    assert train(tmp_path / "saved", tmp_path / "generator", *sampling) == 0
    assert "Trained 2 steps" in capsys.readouterr().out
    pipeline = DiffusionPipeline.from_pretrained(tmp_path / "generator")
    assert pipeline.labels == {name: i for i, name in enumerate(CLASS_NAMES)}
    assert pipeline.config.decoder_num_inference_steps == 3
    assert pipeline.config.guidance_scale == 2.0 and pipeline.config.guidance_interval == [0.2, 1.0]
    assert pipeline.scheduler.config.solver == "heun" and pipeline.scheduler.order == 2
    assert pipeline.scheduler.config.euler_at_final
    assert pipeline.decoder_scheduler.config.solver == "euler"  # the decoder keeps the release's sampler

    # continuing from that pipeline's DiT (its size, not --transformer-kwargs)
    argv = ["train-generator", "--tokenizer", str(tokenizer_dir), "--dataset", str(tmp_path / "saved"), "--seed", "1",
            "--output-dir", str(tmp_path / "continued"), "--num-train-steps", "1", "--batch-size", "4"]
    assert cli_main([*argv, "--init-generator", str(tmp_path / "generator"), "--learning-rate", "0"]) == 0
    continued = DiffusionPipeline.from_pretrained(tmp_path / "continued")
    for name, parameter in continued.transformer.state_dict().items():
        assert torch.equal(parameter, pipeline.transformer.state_dict()[name])
    assert cli_main([*argv, "--init-generator", str(tmp_path / "generator"), "--transformer-kwargs", "{}"]) == 0
    assert cli_main([*argv, "--init-generator", str(tmp_path / "generator"), "--add-layers", "1"]) == 0
    assert DiffusionPipeline.from_pretrained(tmp_path / "continued").transformer.config.num_layers == 2
    assert cli_main([*argv, "--init-generator", str(tmp_path / "generator"), "--lr-scheduler-type", "linear"]) == 0
    assert cli_main([*argv, "--init-generator", str(tmp_path / "generator"), "--lr-scheduler-type", "step"]) == 2
    assert "`lr_scheduler_type` must be one of constant" in capsys.readouterr().err
    assert cli_main([*argv, "--add-layers", "1", "--transformer-kwargs", json.dumps(TINY_DIT)]) == 2
    assert "`add_layers` deepens the DiT given as `init_transformer`" in capsys.readouterr().err
    assert cli_main([*argv, "--init-generator", str(tmp_path / "generator"), "--transformer-kwargs", json.dumps(TINY_DIT)]) == 2
    assert "`transformer_kwargs` size a new DiT" in capsys.readouterr().err

    # an imagefolder directory: one sub-folder per class
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for class_id, name in enumerate(["cat", "dog"]):
        (tmp_path / "folder" / name).mkdir(parents=True)
        Image.fromarray(synthetic_images(class_id, 1, rng)[0]).save(tmp_path / "folder" / name / "0.png")
    assert train(tmp_path / "folder", tmp_path / "from_folder") == 0
    from_folder = DiffusionPipeline.from_pretrained(tmp_path / "from_folder")
    assert from_folder.labels == {"cat": 0, "dog": 1} and from_folder.config.decoder_num_inference_steps is None
    assert from_folder.config.guidance_scale is None and from_folder.config.guidance_interval is None
    assert train(tmp_path / "saved", tmp_path / "unused", "--guidance-interval", "0.8", "0.2") == 2
    assert "0 <= t_start <= t_end <= 1" in capsys.readouterr().err

    # the training flow times (--timestep-*): all near the data end at logit mean 3, std 0.3
    near_data = ["--timestep-distribution", "lognormal", "--timestep-logit-mean", "3", "--timestep-logit-std", "0.3"]
    with spy_on_dit_forward() as spy:
        assert train(tmp_path / "saved", tmp_path / "near_data", *near_data) == 0
    timesteps = torch.cat([call.kwargs["timestep"] for call in spy.call_args_list])
    assert len(timesteps) == 8 and timesteps.min() > 1000 * torch.sigmoid(torch.tensor(1.8))
    assert train(tmp_path / "saved", tmp_path / "unused", "--timestep-uniform-fraction", "2") == 2
    assert "`uniform_fraction` must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "unused").exists()

    assert train(tmp_path / "nowhere", tmp_path / "unused") == 2
    assert "does not exist" in capsys.readouterr().err
