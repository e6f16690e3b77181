"""UniFlowReconstructionPipeline and UniFlowClassConditionalPipeline: fixture parity, seeding, batching, output types,
guidance, errors, saving/loading (also through DiffusionPipeline and after `import uniflow_hf` only). The converter
is tested in test_conversion.py, the `generate` / `reconstruct` commands in test_cli.py; the tiny pipelines all three
use are built in conftest.py."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from safetensors.torch import load_file

from uniflow_hf import (
    UniFlowClassConditionalPipeline,
    UniFlowFlowMatchScheduler,
    UniFlowImageProcessor,
    UniFlowModel,
    UniFlowReconstructionPipeline,
)
from conftest import ID2LABEL, generators, random_images, tiny_transformer
from uniflow_hf.pipelines.pipeline_uniflow_class_conditional import latents_to_grid


# ------------------------------------------------------------------------------------------ official fixture
@pytest.mark.parametrize("schedule", ["linear", "pow_0.25"])
def test_pipeline_decodes_the_official_fixture(official_tiny_dir, schedule):
    tokenizer = UniFlowModel.from_pretrained(official_tiny_dir, sampling_schedule=schedule).eval()
    pipeline = UniFlowReconstructionPipeline(tokenizer)
    inputs = load_file(official_tiny_dir / "inputs.safetensors")
    expected = load_file(official_tiny_dir / "expected.safetensors")
    decoded = pipeline.tokenizer.decode(  # the pixel decoder's one sampler, which the pipeline calls
        expected["latent_tokens"], noise=inputs["noise"].reshape(2, 16, 192), num_inference_steps=4
    )
    np.testing.assert_allclose(decoded.numpy(), expected[f"reconstruction.steps4.{schedule}"].numpy(), atol=1e-4, rtol=0)


def test_pipeline_is_the_processor_around_the_tokenizer(official_tiny_dir):
    """images -> processor -> reconstruct -> postprocess, with the tokenizer's own (fixture-verified) numerics."""
    tokenizer = UniFlowModel.from_pretrained(official_tiny_dir, sampling_schedule="pow_0.25").eval()
    pipeline = UniFlowReconstructionPipeline(tokenizer)
    pipeline.set_progress_bar_config(disable=True)
    images = random_images(2)
    noise = torch.randn(2, 16, 192, generator=torch.Generator().manual_seed(0))
    output = pipeline(images, num_inference_steps=3, noise=noise, output_type="pt").images
    processor = pipeline.processor
    expected = tokenizer.reconstruct(
        processor(images, return_tensors="pt").pixel_values, noise=noise, num_inference_steps=3
    )
    assert torch.allclose(output, processor.postprocess(expected, output_type="pt"), atol=1e-6)
    assert processor.size["shortest_edge"] == 32 and processor.crop_size["height"] == 32


# ------------------------------------------------------------------------------------------ reconstruction
def test_reconstruction_seeding(reconstruction_pipeline):
    images = random_images(2)
    first = reconstruction_pipeline(images, generator=torch.manual_seed(3), output_type="np").images
    again = reconstruction_pipeline(images, generator=torch.manual_seed(3), output_type="np").images
    other = reconstruction_pipeline(images, generator=torch.manual_seed(4), output_type="np").images
    assert np.array_equal(first, again) and not np.allclose(first, other)


def test_reconstruction_batch_with_one_generator_per_image(reconstruction_pipeline):
    images = random_images(4)
    batch = reconstruction_pipeline(images, generator=generators(range(4)), output_type="pt").images
    singles = [
        reconstruction_pipeline(image, generator=generators([i]), output_type="pt").images
        for i, image in enumerate(images)
    ]
    assert torch.allclose(batch, torch.cat(singles), atol=1e-6)


def test_reconstruction_output_types(reconstruction_pipeline):
    images = random_images(2)
    outputs = {
        output_type: reconstruction_pipeline(images, generator=torch.manual_seed(0), output_type=output_type).images
        for output_type in ("pil", "np", "pt")
    }
    assert outputs["pt"].shape == (2, 3, 32, 32) and 0 <= outputs["pt"].min() and outputs["pt"].max() <= 1
    assert outputs["np"].shape == (2, 32, 32, 3)
    assert np.allclose(outputs["np"], outputs["pt"].permute(0, 2, 3, 1).numpy())
    assert [image.size for image in outputs["pil"]] == [(32, 32)] * 2
    pil_pixels = np.stack([np.asarray(image) for image in outputs["pil"]])
    assert np.array_equal(pil_pixels, np.round(outputs["np"] * 255).astype(np.uint8))
    as_tuple = reconstruction_pipeline(images, generator=torch.manual_seed(0), output_type="pt", return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], outputs["pt"])


def test_reconstruction_accepts_pil_numpy_torch_and_lists(reconstruction_pipeline):
    array = random_images(1)[0]
    runs = [array, Image.fromarray(array), torch.from_numpy(array).permute(2, 0, 1), [array], array[None]]
    outputs = [reconstruction_pipeline(x, generator=torch.manual_seed(0), output_type="pt").images for x in runs]
    for output in outputs[1:]:
        assert torch.equal(output, outputs[0])


def test_reconstruction_steps(reconstruction_pipeline):
    calls = []
    flow_head = reconstruction_pipeline.tokenizer.flow_head
    forward = flow_head.forward
    with mock.patch.object(flow_head, "forward", side_effect=lambda *args: calls.append(1) or forward(*args)):
        reconstruction_pipeline(random_images(1), num_inference_steps=3)
        assert len(calls) == 3
        calls.clear()
        reconstruction_pipeline(random_images(1))  # the tokenizer's default
        assert len(calls) == reconstruction_pipeline.tokenizer.config.num_sampling_steps


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(image="cat.png"), TypeError, "open the image first"),
        (dict(image=[1, 2]), TypeError, "Unsupported image type"),
        (dict(image=random_images(1), num_inference_steps=0), ValueError, "positive integer"),
        (dict(image=random_images(1), num_inference_steps=-2), ValueError, "positive integer"),
        (dict(image=random_images(1), output_type="tensor"), ValueError, "output_type"),
        (dict(image=random_images(1), num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
        (dict(image=random_images(1), callback_on_step_end_tensor_inputs=["noise"]), ValueError, "may name"),
        (dict(image=random_images(2), generator=generators([0])), ValueError, "2 images"),
        (dict(image=random_images(1), generator=3), TypeError, "torch.Generator"),
    ],
)
def test_reconstruction_bad_inputs(reconstruction_pipeline, kwargs, error, match):
    with pytest.raises(error, match=match):
        reconstruction_pipeline(**kwargs)


# ---------------------------------------------------------------------------------------- class-conditional
def generate_latents_by_hand(
    pipeline, class_ids, guidance_scale, steps, generator, guidance_interval=(0.0, 1.0), guide=None,
    autoguidance_scale=1.0, autoguidance_interval=(0.0, 1.0), guidance_rescale=0.0,
):
    """The specification: Euler flow in the normalised latent space with CFG (at the times t = timestep / 1000 in
    `guidance_interval`; the guided velocity rescaled toward the conditional one's per-sample std by
    `guidance_rescale`) plus autoguidance by `guide` (at the times in `autoguidance_interval`), then
    de-normalisation."""
    transformer, scheduler = pipeline.transformer, UniFlowFlowMatchScheduler()
    config = transformer.config
    latents = randn_tensor((len(class_ids), config.in_channels, config.sample_size, config.sample_size), generator=generator)
    labels, null = torch.tensor(class_ids), torch.full((len(class_ids),), config.num_embeds_ada_norm)
    scheduler.set_timesteps(steps)
    for timestep in scheduler.timesteps:
        t = timestep.expand(len(class_ids))
        conditional = velocity = transformer(latents, timestep=t, class_labels=labels).sample
        if guidance_scale != 1 and guidance_interval[0] <= timestep / 1000 <= guidance_interval[1]:
            unconditional = transformer(latents, timestep=t, class_labels=null).sample
            velocity = unconditional + guidance_scale * (conditional - unconditional)
            ratio = torch.stack([c.std() / v.std() for c, v in zip(conditional, velocity)]).reshape(-1, 1, 1, 1)
            velocity = guidance_rescale * velocity * ratio + (1 - guidance_rescale) * velocity
        if autoguidance_scale != 1 and autoguidance_interval[0] <= timestep / 1000 <= autoguidance_interval[1]:
            velocity = velocity + (autoguidance_scale - 1) * (conditional - guide(latents, t, class_labels=labels).sample)
        latents = scheduler.step(velocity, timestep, latents).prev_sample
    mean = torch.tensor(pipeline.config.latent_mean).reshape(1, -1, 1, 1)
    std = torch.tensor(pipeline.config.latent_std).reshape(1, -1, 1, 1)
    return (latents * std + mean).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0, 0.0])
def test_class_conditional_follows_the_specification(class_conditional_pipeline, guidance_scale):
    kwargs = dict(guidance_scale=guidance_scale, num_inference_steps=3)
    latents = class_conditional_pipeline([0, 2], generator=torch.manual_seed(0), output_type="latent", **kwargs).images
    expected = generate_latents_by_hand(class_conditional_pipeline, [0, 2], guidance_scale, 3, torch.manual_seed(0))
    assert latents.shape == (2, 16, 8)
    assert torch.allclose(latents, expected, atol=1e-5)


@pytest.mark.parametrize("guidance_rescale", [0.7, 1.0])
def test_guidance_rescale_follows_the_specification(class_conditional_pipeline, guidance_rescale):
    kwargs = dict(guidance_scale=3.0, num_inference_steps=4, guidance_interval=(0.25, 1.0))
    latents = class_conditional_pipeline(
        [0, 2], generator=torch.manual_seed(0), output_type="latent", guidance_rescale=guidance_rescale, **kwargs
    ).images
    expected = generate_latents_by_hand(
        class_conditional_pipeline, [0, 2], 3.0, 4, torch.manual_seed(0), guidance_interval=(0.25, 1.0),
        guidance_rescale=guidance_rescale,
    )
    assert torch.allclose(latents, expected, atol=1e-5)
    plain = class_conditional_pipeline([0, 2], generator=torch.manual_seed(0), output_type="latent", **kwargs).images
    assert not torch.allclose(latents, plain, atol=1e-3)


def test_guidance_rescale_default_is_saved_and_checked(class_conditional_pipeline, tmp_path):
    pipeline = class_conditional_pipeline
    rescaled = UniFlowClassConditionalPipeline(**pipeline.components, **{**pipeline.settings, "guidance_rescale": 0.7})
    rescaled.set_progress_bar_config(disable=True)
    assert pipeline.sampling_setting("guidance_rescale") == 0.0 and rescaled.sampling_setting("guidance_rescale") == 0.7
    rescaled.save_pretrained(tmp_path)
    loaded = UniFlowClassConditionalPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.guidance_rescale == 0.7
    kwargs = dict(guidance_scale=3.0, num_inference_steps=3, output_type="latent")
    assert torch.equal(
        loaded([1], generator=torch.manual_seed(0), **kwargs).images,
        pipeline([1], generator=torch.manual_seed(0), guidance_rescale=0.7, **kwargs).images,
    )
    for bad in (-0.1, 1.5, "0.7", True):
        with pytest.raises(ValueError, match="guidance_rescale"):
            pipeline([1], guidance_rescale=bad)
        with pytest.raises(ValueError, match="guidance_rescale"):
            UniFlowClassConditionalPipeline(**pipeline.components, **{**pipeline.settings, "guidance_rescale": bad})


def test_decoder_latent_scale_scales_what_the_decoder_decodes(class_conditional_pipeline, tmp_path):
    """The images are the tokenizer's decoding of the generated latents times the scale, with the decoder noise the
    generator draws next; the latents themselves (`output_type="latent"`) are not scaled. The default is saved and
    every value is checked."""
    pipeline = class_conditional_pipeline
    kwargs = dict(guidance_scale=2.0, num_inference_steps=3, decoder_num_inference_steps=2)
    latents = pipeline([0, 2], generator=torch.manual_seed(0), output_type="latent", decoder_latent_scale=1.5, **kwargs)
    assert torch.equal(latents.images, pipeline([0, 2], generator=torch.manual_seed(0), output_type="latent", **kwargs).images)
    images = pipeline([0, 2], generator=torch.manual_seed(0), output_type="pt", decoder_latent_scale=1.5, **kwargs).images

    generator = torch.manual_seed(0)
    generated = pipeline([0, 2], generator=generator, output_type="latent", **kwargs).images  # draws the latent noise
    decoded = pipeline.tokenizer.decode(1.5 * generated, generator=generator, num_inference_steps=2)
    assert torch.allclose(images, pipeline.processor.postprocess(decoded, output_type="pt"), atol=1e-5)
    unscaled = pipeline([0, 2], generator=torch.manual_seed(0), output_type="pt", **kwargs).images
    assert not torch.allclose(images, unscaled, atol=1e-5)  # the tiny decoder depends on its latents only weakly

    scaled = UniFlowClassConditionalPipeline(**pipeline.components, **{**pipeline.settings, "decoder_latent_scale": 1.5})
    scaled.save_pretrained(tmp_path)
    loaded = UniFlowClassConditionalPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert pipeline.sampling_setting("decoder_latent_scale") == 1.0 and loaded.sampling_setting("decoder_latent_scale") == 1.5
    assert torch.equal(loaded([0, 2], generator=torch.manual_seed(0), output_type="pt", **kwargs).images, images)
    for bad in (0, -1.0, "1.5", True):
        with pytest.raises(ValueError, match="`decoder_latent_scale` must be a number > 0"):
            pipeline([1], decoder_latent_scale=bad)
        with pytest.raises(ValueError, match="`decoder_latent_scale` must be a number > 0"):
            UniFlowClassConditionalPipeline(**pipeline.components, **{**pipeline.settings, "decoder_latent_scale": bad})


@pytest.mark.parametrize("guidance_interval", [(0.3, 1.0), (0.0, 0.5), (0.25, 0.5)])
def test_guidance_interval_follows_the_specification(class_conditional_pipeline, guidance_interval):
    kwargs = dict(guidance_scale=3.0, num_inference_steps=4, guidance_interval=guidance_interval)
    latents = class_conditional_pipeline([0, 2], generator=torch.manual_seed(0), output_type="latent", **kwargs).images
    expected = generate_latents_by_hand(
        class_conditional_pipeline, [0, 2], 3.0, 4, torch.manual_seed(0), guidance_interval=guidance_interval
    )
    assert torch.allclose(latents, expected, atol=1e-5)
    everywhere = class_conditional_pipeline([0, 2], generator=torch.manual_seed(0), output_type="latent",
                                            **{**kwargs, "guidance_interval": (0.0, 1.0)}).images
    assert not torch.allclose(latents, everywhere, atol=1e-4)


def test_guidance_interval_guides_only_its_calls(class_conditional_pipeline, tmp_path):
    """Times 0, 0.25, 0.5, 0.75 (4 Euler steps): (0.25, 0.5) guides the 2nd and 3rd calls only; the pipeline's config
    gives the default interval and scale, which a call overrides, and save/load keeps them."""
    pipeline = class_conditional_pipeline

    def batch_sizes(pipe, **kwargs):
        transformer = pipe.transformer
        with mock.patch.object(transformer, "forward", wraps=transformer.forward) as forward:
            pipe([1, 2], guidance_scale=2.0, num_inference_steps=4, **kwargs)
        return [call.args[0].shape[0] for call in forward.call_args_list]

    assert batch_sizes(pipeline) == [4, 4, 4, 4]
    assert batch_sizes(pipeline, guidance_interval=(0.25, 0.5)) == [2, 4, 4, 2]
    assert batch_sizes(pipeline, guidance_interval=[0.9, 1.0]) == [2, 2, 2, 2]
    pipeline.register_to_config(guidance_interval=[0.5, 1.0])
    pipeline.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["guidance_interval"] == [0.5, 1.0]
    loaded = UniFlowClassConditionalPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert batch_sizes(loaded) == [2, 2, 4, 4]
    assert batch_sizes(loaded, guidance_interval=(0.0, 1.0)) == [4, 4, 4, 4]
    with pytest.raises(ValueError, match="guidance_interval"):
        UniFlowClassConditionalPipeline(**pipeline.components, guidance_interval=(0.5, 0.2))
    with pytest.raises(ValueError, match="guidance_scale"):
        UniFlowClassConditionalPipeline(**pipeline.components, guidance_scale=-2.0)


def test_guidance_interval_ends_on_the_grid_are_inside(class_conditional_pipeline):
    """Heun's 5-step grid visits t = 0, 0.2, 0.2, 0.4, 0.4, ..., 1 (0.2 and 0.4 are 0.19999998 and 0.39999997 in
    float32): an interval that starts or ends on a grid time includes it."""
    pipeline = class_conditional_pipeline
    pipeline.scheduler = UniFlowFlowMatchScheduler(solver="heun")
    transformer = pipeline.transformer
    with mock.patch.object(transformer, "forward", wraps=transformer.forward) as forward:
        pipeline([1, 2], guidance_scale=2.0, num_inference_steps=5, guidance_interval=(0.2, 0.4))
    assert [call.args[0].shape[0] for call in forward.call_args_list] == [2, 4, 4, 4, 4, 2, 2, 2, 2, 2]


@pytest.mark.parametrize(
    "guidance_scale, autoguidance_scale, autoguidance_interval", [(1.0, 2.5, (0.0, 1.0)), (3.0, 2.0, (0.5, 1.0))]
)
def test_autoguidance_follows_the_specification(
    autoguided_pipeline, guidance_scale, autoguidance_scale, autoguidance_interval
):
    pipeline = autoguided_pipeline
    kwargs = dict(guidance_scale=guidance_scale, num_inference_steps=4, guidance_interval=(0.25, 0.5))
    latents = pipeline([0, 2], generator=torch.manual_seed(0), output_type="latent", autoguidance_scale=autoguidance_scale,
                       autoguidance_interval=autoguidance_interval, **kwargs).images
    expected = generate_latents_by_hand(
        pipeline, [0, 2], guidance_scale, 4, torch.manual_seed(0), guidance_interval=(0.25, 0.5),
        guide=pipeline.guide_transformer, autoguidance_scale=autoguidance_scale,
        autoguidance_interval=autoguidance_interval,
    )
    assert torch.allclose(latents, expected, atol=1e-5)
    unguided = pipeline([0, 2], generator=torch.manual_seed(0), output_type="latent", autoguidance_scale=1.0, **kwargs)
    assert torch.allclose(
        unguided.images,
        generate_latents_by_hand(pipeline, [0, 2], guidance_scale, 4, torch.manual_seed(0), guidance_interval=(0.25, 0.5)),
        atol=1e-5,
    )
    assert not torch.allclose(latents, unguided.images, atol=1e-4)


def test_autoguidance_defaults_calls_and_save_load(autoguided_pipeline, tmp_path):
    """The config's autoguidance (2 over t >= 0.5) calls the guide at t = 0.5 and 0.75 of 4 Euler steps, with the
    requested classes; it is saved with the guide, and a call overrides it."""
    pipeline = autoguided_pipeline
    guide = pipeline.guide_transformer

    def guide_labels(pipe, **kwargs):
        with mock.patch.object(pipe.guide_transformer, "forward", wraps=pipe.guide_transformer.forward) as forward:
            pipe([1, 2], guidance_scale=2.0, num_inference_steps=4, **kwargs)
        return [(call.args[0].shape[0], call.kwargs["class_labels"].tolist()) for call in forward.call_args_list]

    assert guide_labels(pipeline) == [(2, [1, 2])] * 2
    assert guide_labels(pipeline, autoguidance_interval=(0.0, 1.0)) == [(2, [1, 2])] * 4
    assert guide_labels(pipeline, autoguidance_scale=1.0) == []

    kwargs = dict(num_inference_steps=4, output_type="pt")
    expected = pipeline(["stripes", 1], generator=torch.manual_seed(0), **kwargs).images
    pipeline.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    assert model_index["guide_transformer"] == ["diffusers", "DiTTransformer2DModel"]
    assert model_index["autoguidance_scale"] == 2.0 and model_index["autoguidance_interval"] == [0.5, 1.0]
    loaded = DiffusionPipeline.from_pretrained(tmp_path, dtype=torch.float32)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(loaded.guide_transformer.pos_embed.proj.weight, guide.pos_embed.proj.weight)
    assert torch.equal(loaded(["stripes", 1], generator=torch.manual_seed(0), **kwargs).images, expected)


def test_pipeline_without_a_guide_saves_and_loads_none(class_conditional_pipeline, tmp_path):
    """A folder saved before pipelines had a guide (no `guide_transformer` in model_index.json) loads without one."""
    class_conditional_pipeline.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    assert model_index["guide_transformer"] == [None, None] and model_index["autoguidance_scale"] is None
    for key in ("guide_transformer", "autoguidance_scale", "autoguidance_interval"):
        del model_index[key]
    (tmp_path / "model_index.json").write_text(json.dumps(model_index))
    loaded = UniFlowClassConditionalPipeline.from_pretrained(tmp_path)
    assert loaded.guide_transformer is None and loaded.sampling_setting("autoguidance_scale") == 1.0


def test_autoguidance_bad_inputs(class_conditional_pipeline, autoguided_pipeline):
    pipeline = class_conditional_pipeline
    settings = {key: pipeline.config[key] for key in ("id2label", "latent_mean", "latent_std")}
    with pytest.raises(ValueError, match="needs a `guide_transformer`"):
        UniFlowClassConditionalPipeline(**pipeline.components, **settings, autoguidance_scale=2.0)
    with pytest.raises(ValueError, match="needs a `guide_transformer`.*has none"):
        pipeline([0], autoguidance_scale=2.0)
    with pytest.raises(ValueError, match="autoguidance_scale"):
        autoguided_pipeline([0], autoguidance_scale=-1.0)
    with pytest.raises(ValueError, match="autoguidance_interval"):
        autoguided_pipeline([0], autoguidance_interval=(0.7, 0.2))
    other_classes = tiny_transformer(pipeline.tokenizer.config, num_classes=4)
    with pytest.raises(ValueError, match="guide_transformer must model the transformer's latents and classes"):
        UniFlowClassConditionalPipeline(**{**pipeline.components, "guide_transformer": other_classes})


def test_guidance_scale_default_from_the_pipeline_config(class_conditional_pipeline, tmp_path):
    pipeline = class_conditional_pipeline
    assert pipeline.config.guidance_scale is None and pipeline.sampling_setting("guidance_scale") == 1.5

    def latents(pipe, **kwargs):
        return pipe([0, 2], generator=torch.manual_seed(0), num_inference_steps=3, output_type="latent", **kwargs).images

    default, at_three = latents(pipeline), latents(pipeline, guidance_scale=3.0)
    assert torch.equal(default, latents(pipeline, guidance_scale=1.5)) and not torch.allclose(default, at_three)
    pipeline.register_to_config(guidance_scale=3.0)
    pipeline.save_pretrained(tmp_path)
    loaded = UniFlowClassConditionalPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.sampling_setting("guidance_scale") == 3.0
    assert torch.allclose(latents(loaded), at_three, atol=1e-6)
    assert torch.allclose(latents(loaded, guidance_scale=1.5), default, atol=1e-6)  # a call overrides it


def test_guidance_one_runs_one_unguided_forward_per_step(class_conditional_pipeline):
    transformer = class_conditional_pipeline.transformer
    for guidance_scale, batch, labels in [(1.0, 2, [1, 2]), (4.0, 4, [1, 2, 3, 3])]:
        with mock.patch.object(transformer, "forward", wraps=transformer.forward) as forward:
            class_conditional_pipeline([1, 2], guidance_scale=guidance_scale, num_inference_steps=4)
        assert forward.call_count == 4
        for call in forward.call_args_list:
            assert call.args[0].shape[0] == batch and call.kwargs["class_labels"].tolist() == labels


def test_half_precision_generator_gets_exact_timesteps(class_conditional_pipeline):
    """In bf16 the DiT still gets the float32 timesteps (its sinusoidal embedding is computed in float32)."""
    pipeline = class_conditional_pipeline.to(torch.bfloat16)
    transformer = pipeline.transformer
    with mock.patch.object(transformer, "forward", wraps=transformer.forward) as forward:
        images = pipeline([0, 1], num_inference_steps=3, generator=torch.manual_seed(0), output_type="pt").images
    pipeline.scheduler.set_timesteps(3)
    timesteps = [call.kwargs["timestep"] for call in forward.call_args_list]
    assert {t.dtype for t in timesteps} == {torch.float32}
    assert torch.equal(torch.stack([t[0] for t in timesteps]), pipeline.scheduler.timesteps)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_class_conditional_decodes_what_it_generates(class_conditional_pipeline):
    pipeline = class_conditional_pipeline
    kwargs = dict(num_inference_steps=2, decoder_num_inference_steps=3)
    images = pipeline([0, 1], generator=generators([5, 6]), output_type="pt", **kwargs).images
    generators_ = generators([5, 6])
    latents = pipeline([0, 1], generator=generators_, output_type="latent", **kwargs).images
    decoded = pipeline.tokenizer.decode(latents, generator=generators_, num_inference_steps=3)  # decoder noise follows
    assert torch.allclose(images, pipeline.processor.postprocess(decoded, output_type="pt"), atol=1e-6)


def test_class_conditional_takes_its_starting_noise(class_conditional_pipeline):
    """`latents`: the pipeline's own draw passed in gives the seeded call's images (the generator then draws only the
    decoder's noise, from where it stands); other noise gives other latents; a wrong shape is refused."""
    pipeline = class_conditional_pipeline
    kwargs = dict(num_inference_steps=2, decoder_num_inference_steps=2, output_type="pt")
    with torch.no_grad():  # decoder noise that matters: a flow head whose velocity depends on the sample
        for parameter in pipeline.tokenizer.flow_head.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    seeded = pipeline([0, 2], generator=torch.manual_seed(3), **kwargs).images
    generator = torch.manual_seed(3)
    noise = randn_tensor((2, 8, 4, 4), generator=generator)
    assert torch.allclose(pipeline([0, 2], generator=generator, latents=noise, **kwargs).images, seeded, atol=1e-6)
    latent_kwargs = {**kwargs, "output_type": "latent"}
    own = pipeline([0, 2], generator=torch.manual_seed(3), **latent_kwargs).images
    assert torch.equal(pipeline([0, 2], latents=noise, **latent_kwargs).images, own)
    assert not torch.allclose(pipeline([0, 2], latents=1.1 * noise, **latent_kwargs).images, own, atol=1e-3)
    for bad in (torch.zeros(1, 8, 4, 4), torch.zeros(2, 8, 16), noise.numpy()):
        with pytest.raises(ValueError, match=r"`latents` must be a tensor of shape \(2, 8, 4, 4\)"):
            pipeline([0, 2], latents=bad, **kwargs)


def test_generation_decoder_steps_default_from_the_pipeline_config(class_conditional_pipeline, tmp_path):
    pipeline = class_conditional_pipeline
    assert pipeline.tokenizer.config.num_sampling_steps == 1 and pipeline.config.decoder_num_inference_steps is None
    with torch.no_grad():  # a trained-like flow head: its velocity depends on the time and the sample (not zero-init)
        for parameter in pipeline.tokenizer.flow_head.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))

    def images(pipe, **kwargs):
        return pipe([0, 1], generator=generators([5, 6]), num_inference_steps=2, output_type="pt", **kwargs).images

    one_step, three_steps = images(pipeline), images(pipeline, decoder_num_inference_steps=3)
    assert not torch.allclose(one_step, three_steps, atol=1e-3)
    pipeline.register_to_config(decoder_num_inference_steps=3)
    pipeline.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["decoder_num_inference_steps"] == 3
    loaded = UniFlowClassConditionalPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert torch.allclose(images(loaded), three_steps, atol=1e-6)
    assert torch.allclose(images(loaded, decoder_num_inference_steps=1), one_step, atol=1e-6)  # a call overrides it
    with pytest.raises(ValueError, match="decoder_num_inference_steps"):
        UniFlowClassConditionalPipeline(**pipeline.components, decoder_num_inference_steps=0)


def test_folder_saved_with_a_decoder_scheduler_loads_and_decodes_as_before(class_conditional_pipeline, tmp_path):
    """Folders saved before the decoder's sampler had one owner (`UniFlowModel.decode`) hold a `decoder_scheduler`
    component: it is not loaded, and its settings must describe the tokenizer's sampler (Euler, its schedule)."""
    pipeline = class_conditional_pipeline
    with torch.no_grad():  # a trained-like flow head, so that the decoder's steps matter
        for parameter in pipeline.tokenizer.flow_head.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    kwargs = dict(num_inference_steps=2, decoder_num_inference_steps=3, output_type="pt")
    expected = pipeline([0, 1], generator=generators([5, 6]), **kwargs).images
    pipeline.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    model_index["decoder_scheduler"] = ["scheduling_uniflow_flow_match", "UniFlowFlowMatchScheduler"]
    (tmp_path / "model_index.json").write_text(json.dumps(model_index))
    UniFlowFlowMatchScheduler(schedule="linear").save_pretrained(tmp_path / "decoder_scheduler")

    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert "decoder_scheduler" not in loaded.components
    assert torch.equal(loaded([0, 1], generator=generators([5, 6]), **kwargs).images, expected)
    UniFlowFlowMatchScheduler(schedule="pow_0.25").save_pretrained(tmp_path / "decoder_scheduler")
    with pytest.raises(ValueError, match=r"`decoder_scheduler` says .*'pow_0.25'.* delete the folder's"):
        DiffusionPipeline.from_pretrained(tmp_path)


def test_reconstruction_folder_saved_with_a_scheduler_loads_and_decodes_as_before(official_tiny_dir, tmp_path):
    """Reconstruction folders saved before its never-stepped `scheduler` went load without it; that scheduler must
    describe the tokenizer's sampler."""
    tokenizer = UniFlowModel.from_pretrained(official_tiny_dir).eval()
    pipeline = UniFlowReconstructionPipeline(tokenizer)
    pipeline.set_progress_bar_config(disable=True)
    images = random_images(2)
    expected = pipeline(images, generator=generators([0, 1]), output_type="pt").images
    pipeline.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    model_index["scheduler"] = ["scheduling_uniflow_flow_match", "UniFlowFlowMatchScheduler"]
    (tmp_path / "model_index.json").write_text(json.dumps(model_index))
    UniFlowFlowMatchScheduler(schedule="linear").save_pretrained(tmp_path / "scheduler")  # the tokenizer's

    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is UniFlowReconstructionPipeline and "scheduler" not in loaded.components
    assert torch.equal(loaded(images, generator=generators([0, 1]), output_type="pt").images, expected)
    UniFlowFlowMatchScheduler(schedule="pow_0.25").save_pretrained(tmp_path / "scheduler")
    with pytest.raises(ValueError, match=r"`scheduler` says .*'pow_0.25'.*'linear'.* delete the folder's `scheduler`"):
        DiffusionPipeline.from_pretrained(tmp_path)


def test_class_conditional_seeding_and_batching(class_conditional_pipeline):
    pipeline = class_conditional_pipeline
    kwargs = dict(num_inference_steps=2, output_type="pt")
    first = pipeline([0, 1], generator=torch.manual_seed(1), **kwargs).images
    again = pipeline([0, 1], generator=torch.manual_seed(1), **kwargs).images
    other = pipeline([0, 1], generator=torch.manual_seed(2), **kwargs).images
    assert torch.equal(first, again) and not torch.allclose(first, other)
    labels = [0, "square", 2, 0]
    batch = pipeline(labels, generator=generators(range(4)), **kwargs).images
    singles = torch.cat([pipeline(label, generator=generators([i]), **kwargs).images for i, label in enumerate(labels)])
    assert torch.allclose(batch, singles, atol=1e-5)


def test_class_conditional_output_types(class_conditional_pipeline):
    outputs = {
        output_type: class_conditional_pipeline(
            [2], generator=torch.manual_seed(0), num_inference_steps=2, output_type=output_type
        ).images
        for output_type in ("pil", "np", "pt")
    }
    assert outputs["pt"].shape == (1, 3, 32, 32) and outputs["np"].shape == (1, 32, 32, 3)
    assert np.allclose(outputs["np"], outputs["pt"].permute(0, 2, 3, 1).numpy())
    assert np.array_equal(np.asarray(outputs["pil"][0]), np.round(outputs["np"][0] * 255).astype(np.uint8))


def test_class_labels_by_name_and_id(class_conditional_pipeline):
    pipeline = class_conditional_pipeline
    assert pipeline.labels == {"circle": 0, "square": 1, "stripes": 2}
    assert pipeline.get_label_ids("square") == [1]
    assert pipeline.get_label_ids(2) == [2]
    assert pipeline.get_label_ids(["stripes", 0, np.int64(1)]) == [2, 0, 1]
    assert pipeline.get_label_ids(torch.tensor([1, 0])) == [1, 0]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(class_labels="triangle"), ValueError, "'circle', 'square', 'stripes'"),
        (dict(class_labels=3), ValueError, "0 to 2"),
        (dict(class_labels=[0, -1]), ValueError, "out of range"),
        (dict(class_labels=[]), TypeError, "non-empty"),
        (dict(class_labels=[True]), TypeError, "int id or a str name"),
        (dict(class_labels=[0.5]), TypeError, "int id or a str name"),
        (dict(class_labels=0, num_inference_steps=0), ValueError, "num_inference_steps"),
        (dict(class_labels=0, decoder_num_inference_steps=-1), ValueError, "decoder_num_inference_steps"),
        (dict(class_labels=0, guidance_scale=-1.0), ValueError, ">= 0"),
        (dict(class_labels=0, guidance_interval=(0.6, 0.4)), ValueError, "0 <= t_start <= t_end <= 1"),
        (dict(class_labels=0, guidance_interval=(0.0, 1.5)), ValueError, "0 <= t_start <= t_end <= 1"),
        (dict(class_labels=0, guidance_interval=0.5), ValueError, "a pair"),
        (dict(class_labels=0, guidance_interval=(0.1, 0.2, 0.3)), ValueError, "a pair"),
        (dict(class_labels=0, guidance_interval="0.2,1"), ValueError, "a pair"),
        (dict(class_labels=0, output_type="jpeg"), ValueError, "output_type"),
        (dict(class_labels=[0, 1], generator=generators([0, 1, 2])), ValueError, "3 generators for 2 images"),
    ],
)
def test_class_conditional_bad_inputs(class_conditional_pipeline, kwargs, error, match):
    with pytest.raises(error, match=match):
        class_conditional_pipeline(**kwargs)


def test_names_need_id2label(tiny_model):
    pipeline = UniFlowClassConditionalPipeline(tiny_transformer(tiny_model.config), UniFlowFlowMatchScheduler(), tiny_model)
    with pytest.raises(ValueError, match="no id2label"):
        pipeline.get_label_ids("circle")
    assert pipeline.get_label_ids(1) == [1]


def test_pipeline_checks_its_components(tiny_model):
    config = tiny_model.config
    scheduler = UniFlowFlowMatchScheduler()
    with pytest.raises(ValueError, match="sample_size"):
        transformer = tiny_transformer(config)
        transformer.register_to_config(sample_size=8)
        UniFlowClassConditionalPipeline(transformer, scheduler, tiny_model)
    with pytest.raises(ValueError, match="one value per latent channel"):
        UniFlowClassConditionalPipeline(tiny_transformer(config), scheduler, tiny_model, latent_mean=[0.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        UniFlowClassConditionalPipeline(tiny_transformer(config), scheduler, tiny_model, latent_std=[0.0] * 8)
    with pytest.raises(ValueError, match="outside"):
        UniFlowClassConditionalPipeline(tiny_transformer(config), scheduler, tiny_model, id2label={5: "x"})


@pytest.mark.parametrize("patch_size", [1, 2])
def test_dit_generator_on_the_latent_grid(tiny_config, patch_size):
    """Tiny DiT over the 4x4 grid of 8-channel latents, fed the network time 1000 t as a float."""
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=8, out_channels=8, num_layers=1,
        sample_size=tiny_config.grid_size, patch_size=patch_size, num_embeds_ada_norm=3,
    ).eval()
    sample, labels = torch.randn(2, 8, 4, 4), torch.tensor([0, 3])  # 3: the null class
    velocity = transformer(sample, timestep=torch.tensor([333.3, 333.3]), class_labels=labels).sample
    assert velocity.shape == sample.shape
    truncated = transformer(sample, timestep=torch.tensor([333.0, 333.0]), class_labels=labels).sample
    assert not torch.allclose(velocity, truncated)  # fractional times are embedded as they are


def test_latent_grid_layout(class_conditional_pipeline):
    """Token n of the tokenizer's row-major grid is DiT pixel (n // grid, n % grid)."""
    latents = torch.randn(2, 16, 8)
    grid = latents_to_grid(latents, 4)
    assert torch.equal(grid[:, :, 1, 2], latents[:, 1 * 4 + 2])
    normalized = class_conditional_pipeline.normalize_latents(latents)
    assert torch.allclose(class_conditional_pipeline.denormalize_latents(normalized), latents, atol=1e-6)


# ----------------------------------------------------------------------------------------- saving / loading
def test_reconstruction_save_and_load(reconstruction_pipeline, tmp_path, tiny_config):
    reconstruction_pipeline.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    # diffusers' custom pipeline and components: [module file, class], each file in the folder that names it
    assert model_index["_class_name"] == ["pipeline_uniflow_reconstruction", "UniFlowReconstructionPipeline"]
    assert model_index["tokenizer"] == ["modeling_uniflow", "UniFlowModel"]
    assert "scheduler" not in model_index  # the decoder's sampler is the tokenizer's (`UniFlowModel.decode`)
    assert model_index["image_processor"] == [None, None]  # absent, and it stays absent
    for path in ("pipeline_uniflow_reconstruction.py", "pipeline_uniflow_utils.py", "tokenizer/modeling_uniflow.py",
                 "tokenizer/configuration_uniflow.py", "tokenizer/flow_matching.py", "tokenizer/preprocessor_config.json"):
        assert (tmp_path / path).is_file(), path
    assert not (tmp_path / "image_processor").exists() and not (tmp_path / "scheduler").exists()

    images = random_images(2)
    expected = reconstruction_pipeline(images, generator=torch.manual_seed(0), output_type="pt").images
    for loaded in (
        UniFlowReconstructionPipeline.from_pretrained(tmp_path),
        DiffusionPipeline.from_pretrained(tmp_path, dtype=torch.float32),
    ):
        assert type(loaded) is UniFlowReconstructionPipeline and type(loaded.tokenizer) is UniFlowModel
        assert loaded.image_processor is None
        loaded.set_progress_bar_config(disable=True)
        assert torch.equal(loaded(images, generator=torch.manual_seed(0), output_type="pt").images, expected)

    other = UniFlowModel(tiny_config).eval()
    overridden = DiffusionPipeline.from_pretrained(tmp_path, tokenizer=other)
    assert overridden.tokenizer is other
    float64 = DiffusionPipeline.from_pretrained(tmp_path, torch_dtype=torch.float64)
    assert float64.tokenizer.dtype == torch.float64
    float64.set_progress_bar_config(disable=True)
    assert float64(images, generator=torch.manual_seed(0), output_type="pt").images.shape == (2, 3, 32, 32)


def test_class_conditional_save_and_load(class_conditional_pipeline, tmp_path):
    pipeline = class_conditional_pipeline
    pipeline.image_processor = pipeline.processor
    pipeline.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_uniflow_class_conditional", "UniFlowClassConditionalPipeline"]
    assert model_index["transformer"] == ["diffusers", "DiTTransformer2DModel"]
    assert "decoder_scheduler" not in model_index  # the decoder's sampler is the tokenizer's (`UniFlowModel.decode`)
    assert model_index["image_processor"] == ["image_processing_uniflow", "UniFlowImageProcessor"]
    assert (tmp_path / "image_processor" / "image_processing_uniflow.py").is_file()
    assert model_index["id2label"] == {"0": "circle", "1": "square", "2": "stripes"}
    assert model_index["latent_std"] == pytest.approx(pipeline.config.latent_std)

    kwargs = dict(num_inference_steps=2, output_type="pt")
    expected = pipeline(["stripes", 1], generator=torch.manual_seed(0), **kwargs).images
    loaded = DiffusionPipeline.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(loaded) is UniFlowClassConditionalPipeline
    assert type(loaded.image_processor) is UniFlowImageProcessor
    assert loaded.config.id2label == ID2LABEL
    assert loaded.config.latent_mean == pytest.approx(pipeline.config.latent_mean)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(loaded(["stripes", 1], generator=torch.manual_seed(0), **kwargs).images, expected)

    # a pipeline setting overridden at load time
    renamed = UniFlowClassConditionalPipeline.from_pretrained(tmp_path, id2label={0: "a", 1: "b", 2: "c"})
    assert renamed.labels == {"a": 0, "b": 1, "c": 2}


def test_folders_saved_in_the_former_form_still_load(class_conditional_pipeline, tmp_path):
    """Folders saved before the custom-code form: `_class_name` a name, our entries `["uniflow_hf", class]`, no code."""
    pipeline = class_conditional_pipeline
    pipeline.image_processor = pipeline.processor
    pipeline.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    model_index["_class_name"] = "UniFlowClassConditionalPipeline"
    for name in ("tokenizer", "scheduler", "image_processor"):
        model_index[name] = ["uniflow_hf", model_index[name][1]]
    (tmp_path / "model_index.json").write_text(json.dumps(model_index))
    for code_file in tmp_path.rglob("*.py"):
        code_file.unlink()

    kwargs = dict(num_inference_steps=2, output_type="pt")
    expected = pipeline([0, 2], generator=torch.manual_seed(0), **kwargs).images
    for loaded in (DiffusionPipeline.from_pretrained(tmp_path), UniFlowClassConditionalPipeline.from_pretrained(tmp_path)):
        assert type(loaded) is UniFlowClassConditionalPipeline and type(loaded.tokenizer) is UniFlowModel
        loaded.set_progress_bar_config(disable=True)
        assert torch.equal(loaded([0, 2], generator=torch.manual_seed(0), **kwargs).images, expected)


def test_replacing_a_component_records_its_module_file(reconstruction_pipeline, tiny_config):
    reconstruction_pipeline.tokenizer = UniFlowModel(tiny_config)
    assert reconstruction_pipeline.config.tokenizer == ("modeling_uniflow", "UniFlowModel")
    reconstruction_pipeline.image_processor = UniFlowImageProcessor(size=32, crop_size=32)
    assert reconstruction_pipeline.config.image_processor == ("image_processing_uniflow", "UniFlowImageProcessor")


def test_loading_without_importing_uniflow_hf_needs_trust_remote_code(reconstruction_pipeline, tmp_path):
    """The folder's code runs only with `trust_remote_code=True` (tests/test_remote_code.py); after
    `import uniflow_hf` the package's classes load without it."""
    reconstruction_pipeline.save_pretrained(tmp_path)
    script = (
        "import sys\n"
        "from diffusers import DiffusionPipeline\n"
        "try:\n"
        f"    DiffusionPipeline.from_pretrained({str(tmp_path)!r})\n"
        "except ValueError as error:\n"
        "    print('FAILED:', error)\n"
        "assert 'uniflow_hf' not in sys.modules\n"
        "import uniflow_hf\n"
        f"loaded = DiffusionPipeline.from_pretrained({str(tmp_path)!r})\n"
        "print('LOADED:', type(loaded).__module__, type(loaded.tokenizer).__module__)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Pass `trust_remote_code=True` to allow loading remote code modules" in result.stdout
    expected = "LOADED: uniflow_hf.pipelines.pipeline_uniflow_reconstruction uniflow_hf.modeling.modeling_uniflow"
    assert expected in result.stdout


def test_reconstruction_takes_image_like_diffusers_pipelines(reconstruction_pipeline):
    images = random_images(2)
    expected = reconstruction_pipeline(images, generator=generators([0, 1]), output_type="np").images
    by_name = reconstruction_pipeline(image=images, generator=generators([0, 1]), output_type="np").images
    np.testing.assert_array_equal(by_name, expected)
    with pytest.warns(FutureWarning, match="`images` is deprecated"):
        former = reconstruction_pipeline(images=images, generator=generators([0, 1]), output_type="np").images
    np.testing.assert_array_equal(former, expected)
    with pytest.raises(ValueError, match="not both"):
        reconstruction_pipeline(image=images, images=images)
    with pytest.raises(ValueError, match="`image` is required"):
        reconstruction_pipeline()


def test_pipelines_run_without_their_optional_image_processor(reconstruction_pipeline, class_conditional_pipeline):
    """`image_processor` is an optional component: absent, the tokenizer's default one serves."""
    images = random_images(1)
    expected = reconstruction_pipeline(images, generator=generators([0]), output_type="np").images
    reconstruction_pipeline.image_processor = None
    np.testing.assert_array_equal(
        reconstruction_pipeline(images, generator=generators([0]), output_type="np").images, expected
    )
    expected = class_conditional_pipeline([1], num_inference_steps=2, generator=generators([3]), output_type="np").images
    class_conditional_pipeline.image_processor = None
    again = class_conditional_pipeline([1], num_inference_steps=2, generator=generators([3]), output_type="np").images
    np.testing.assert_array_equal(again, expected)


# ------------------------------------------------------------------------------------ diffusers call contracts
def test_step_end_callback_sees_and_changes_the_latents(class_conditional_pipeline):
    pipeline, seen = class_conditional_pipeline, []

    def record(pipe, step, timestep, callback_kwargs):
        seen.append((step, float(timestep), callback_kwargs["latents"].clone()))
        return {}

    kwargs = dict(num_inference_steps=3, output_type="latent")
    plain = pipeline([0, 2], generator=torch.manual_seed(0), **kwargs).images
    recorded = pipeline([0, 2], generator=torch.manual_seed(0), callback_on_step_end=record, **kwargs).images
    assert torch.equal(recorded, plain)  # a callback that returns nothing changes nothing
    assert [step for step, _, _ in seen] == [0, 1, 2]
    assert [timestep for _, timestep, _ in seen] == pytest.approx(pipeline.scheduler.timesteps.tolist())
    assert torch.allclose(pipeline.denormalize_latents(seen[-1][2]), plain, atol=1e-6)  # the last step's latents

    # the latents it returns replace the pipeline's: zero (normalised) latents at the last step are the latent mean
    zeroed = pipeline(
        [0, 2], generator=torch.manual_seed(0), callback_on_step_end=lambda p, i, t, k: {"latents": 0 * k["latents"]},
        callback_on_step_end_tensor_inputs=["latents"], **kwargs,
    ).images
    expected = torch.tensor(pipeline.config.latent_mean).expand_as(zeroed)
    torch.testing.assert_close(zeroed, expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"may name \['latents'\]"):
        pipeline([0], callback_on_step_end=record, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_num_images_per_prompt_repeats_each_label_consecutively(class_conditional_pipeline):
    pipeline = class_conditional_pipeline
    kwargs = dict(num_inference_steps=2, output_type="pt")
    images = pipeline(["stripes", 0], num_images_per_prompt=2, generator=generators(range(4)), **kwargs).images
    expected = pipeline([2, 2, 0, 0], generator=generators(range(4)), **kwargs).images
    assert images.shape == (4, 3, 32, 32) and torch.equal(images, expected)
    latents = pipeline([1], num_images_per_prompt=3, num_inference_steps=2, output_type="latent").images
    assert latents.shape == (3, 16, pipeline.tokenizer.config.latent_channels)
    with pytest.raises(ValueError, match="3 generators for 4 images"):
        pipeline([0, 1], num_images_per_prompt=2, generator=generators(range(3)), **kwargs)
    with pytest.raises(ValueError, match="`num_images_per_prompt` must be a positive integer"):
        pipeline([0], num_images_per_prompt=0)


def test_reconstruction_latents_images_per_prompt_and_callback(reconstruction_pipeline):
    pipeline, images = reconstruction_pipeline, random_images(2)
    latents = pipeline(images, output_type="latent").images
    encoded = pipeline.tokenizer.encode(pipeline.processor(images, return_tensors="pt").pixel_values)
    assert latents.shape == (2, 16, pipeline.tokenizer.config.latent_channels) and torch.equal(latents, encoded)

    repeated = pipeline(images, num_images_per_prompt=2, generator=generators(range(4)), output_type="pt").images
    expected = pipeline([images[0], images[0], images[1], images[1]], generator=generators(range(4)), output_type="pt")
    assert repeated.shape == (4, 3, 32, 32) and torch.equal(repeated, expected.images)

    # the callback sees the encoded latents at the one latent step and may replace them before decoding
    seen = []

    def swap(pipe, step, timestep, callback_kwargs):
        seen.append((step, float(timestep)))
        return {"latents": callback_kwargs["latents"].flip(0)}

    swapped = pipeline(images, generator=generators([0, 1]), callback_on_step_end=swap, output_type="pt").images
    flipped = pipeline([images[1], images[0]], generator=generators([0, 1]), output_type="pt").images
    assert seen == [(0, 1000.0)] and torch.equal(swapped, flipped)


def test_an_absent_image_processor_stays_absent(class_conditional_pipeline, tmp_path):
    pipeline = class_conditional_pipeline
    assert pipeline.image_processor is None  # not built at construction: `processor` serves
    pipeline.image_processor = pipeline.processor
    pipeline.image_processor = None
    pipeline.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["image_processor"] == [None, None]
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert loaded.image_processor is None and isinstance(loaded.processor, UniFlowImageProcessor)


def test_image_feature_extraction_on_the_tokenizer_folder(reconstruction_pipeline, tmp_path):
    """transformers' pipeline finds the image processor in `tokenizer/`, beside the model it describes."""
    from transformers import pipeline as transformers_pipeline

    reconstruction_pipeline.save_pretrained(tmp_path)
    extractor = transformers_pipeline("image-feature-extraction", model=str(tmp_path / "tokenizer"))
    image = Image.fromarray(random_images(1)[0])
    features = extractor(image, return_tensors=True)
    pixel_values = reconstruction_pipeline.processor(image, return_tensors="pt").pixel_values
    expected = extractor.model(pixel_values=pixel_values).last_hidden_state
    assert isinstance(extractor.image_processor, UniFlowImageProcessor)
    assert features.shape == (1, 17, 64) and torch.allclose(features, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ cards
def test_pipeline_cards_state_what_was_saved(class_conditional_pipeline, reconstruction_pipeline, tmp_path):
    from huggingface_hub import ModelCard

    class_conditional_pipeline.save_pretrained(tmp_path / "generation")
    card = ModelCard.load(tmp_path / "generation" / "README.md")
    assert card.data.pipeline_tag is None  # the Hub has no class-conditional task; not "unconditional"
    assert {"class-conditional", "class-conditional-image-generation", "dit"} <= set(card.data.tags)
    assert card.data.library_name == "diffusers"
    assert "3 classes (circle, square, stripes)" in card.text
    assert "32x32 images (8x8 patches, one latent of 8 channels per patch, 4x4 latents per image)" in card.text
    assert "trust_remote_code=True" in card.text and "import uniflow_hf" in card.text

    reconstruction_pipeline.save_pretrained(tmp_path / "reconstruction")
    card = ModelCard.load(tmp_path / "reconstruction" / "README.md")
    assert card.data.pipeline_tag == "image-to-image" and "reconstruction" in card.data.tags
    assert not (tmp_path / "reconstruction" / "tokenizer" / "README.md").exists()  # the pipeline's card describes it


def test_push_to_hub_uploads_our_card(reconstruction_pipeline, tmp_path):
    uploaded = {}

    def upload_folder(self, folder, repo_id, **kwargs):
        uploaded.update(repo_id=repo_id, card=(tmp_path / "folder" / "README.md").read_text())

    repo = mock.Mock(repo_id="someone/uniflow-reconstruction")
    with mock.patch("huggingface_hub.create_repo", return_value=repo) as create_repo, \
            mock.patch.object(DiffusionPipeline, "_upload_folder", upload_folder):
        reconstruction_pipeline.save_pretrained(tmp_path / "folder", push_to_hub=True, repo_id="uniflow-reconstruction")
    assert create_repo.call_args.args == ("uniflow-reconstruction",)
    assert uploaded["repo_id"] == "someone/uniflow-reconstruction"
    assert "UniFlowReconstructionPipeline" in uploaded["card"] and "trust_remote_code=True" in uploaded["card"]


def test_shipped_folder_carries_the_package_code():
    """The code saved in the shipped pipeline folder is the package's (in this repository its files are links to the
    source, made by `python conversion_scripts/resave_pipeline.py uniflow_hf/models/uniflow-fmnist --link-code`;
    an installed package holds copies)."""
    import uniflow_hf
    from uniflow_hf.pipelines import packaged_class
    from uniflow_hf.pipelines.pipeline_uniflow_utils import module_code_files

    folder = Path(uniflow_hf.FMNIST_MODEL_PATH)
    model_index = json.loads((folder / "model_index.json").read_text())
    code = {"": model_index["_class_name"]}  # subfolder -> [module file, class]
    component_names = UniFlowClassConditionalPipeline._get_signature_keys(UniFlowClassConditionalPipeline)[0]
    code.update({name: model_index[name] for name in component_names if model_index[name][0] not in ("diffusers", None)})
    assert sorted(code) == ["", "image_processor", "scheduler", "tokenizer"]
    for subfolder, (module_file, class_name) in code.items():
        module = sys.modules[packaged_class(module_file, class_name).__module__]
        for file_name, source in module_code_files(module).items():
            saved = folder / subfolder / file_name
            assert saved.read_text() == Path(source).read_text(), f"{saved} is not the package's {source}"


def test_resave_links_only_exact_copies_of_the_package_code(tmp_path):
    """`resave_pipeline --link-code` turns a code file into a link to the package's source only where it is an exact
    copy of it; an edited copy and a file the package does not have stay as they are."""
    from uniflow_hf.conversion_scripts.resave_pipeline import link_package_code
    from uniflow_hf.modeling import flow_matching, loss_uniflow

    (tmp_path / "tokenizer").mkdir()
    copy, edited, other = tmp_path / "tokenizer" / "flow_matching.py", tmp_path / "loss_uniflow.py", tmp_path / "x.py"
    copy.write_bytes(Path(flow_matching.__file__).read_bytes())
    edited.write_text(Path(loss_uniflow.__file__).read_text() + "# edited\n")
    other.write_text("x = 1\n")
    assert link_package_code(tmp_path) == [copy]
    assert copy.is_symlink() and copy.resolve() == Path(flow_matching.__file__).resolve()
    assert not os.path.isabs(os.readlink(copy))  # relative: the repository can move
    assert not edited.is_symlink() and not other.is_symlink() and other.read_text() == "x = 1\n"
