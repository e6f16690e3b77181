# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Train a class-conditional latent generator (a diffusers `DiTTransformer2DModel`) on a frozen UniFlow tokenizer.

The images of a labelled `datasets.Dataset` are encoded once with the frozen tokenizer (kept in memory), the
latents are normalised per channel, and the DiT learns the rectified flow from Gaussian noise (t = 0) to those
latents (t = 1) by regressing the velocity `latents - noise` at times drawn from the training distribution of
`noise_scheduler`; labels are dropped to the null class with probability `label_dropout` so that classifier-free
guidance works. The result is a complete `UniFlowClassConditionalPipeline`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import get_scheduler

from .modeling import UniFlowModel
from .pipelines import UniFlowClassConditionalPipeline, UniFlowFlowMatchScheduler
from .pipelines.pipeline_uniflow_class_conditional import (
    check_guidance_interval, check_guidance_rescale, check_guidance_scale, latents_to_grid,
)
from .pipelines.pipeline_uniflow_utils import check_num_inference_steps, default_image_processor


# learning-rate schedules of transformers' `get_scheduler` that need no more than the warm-up and the step count
LR_SCHEDULER_TYPES = ("constant", "constant_with_warmup", "linear", "cosine")


def check_lr_schedule(lr_scheduler_type: str, warmup_steps: int, num_train_steps: int) -> None:
    if lr_scheduler_type not in LR_SCHEDULER_TYPES:
        accepted = ", ".join(LR_SCHEDULER_TYPES)
        raise ValueError(f"`lr_scheduler_type` must be one of {accepted}; got {lr_scheduler_type!r}.")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or not 0 <= warmup_steps < num_train_steps:
        raise ValueError(
            f"`warmup_steps` must be an integer from 0 to num_train_steps - 1 ({num_train_steps - 1}), "
            f"got {warmup_steps!r}."
        )
    if warmup_steps and lr_scheduler_type == "constant":
        raise ValueError(
            "`lr_scheduler_type='constant'` has no warm-up; use 'constant_with_warmup' for `warmup_steps`."
        )


@dataclass
class GeneratorTrainingOutput:
    """
    Args:
        pipeline (`UniFlowClassConditionalPipeline`): the trained generator with its tokenizer, ready to sample.
        losses (`list[float]`): the flow-matching loss of every step.
    """

    pipeline: UniFlowClassConditionalPipeline
    losses: list[float] = field(default_factory=list)


def default_transformer_kwargs(grid_size: int) -> dict[str, Any]:
    """A small DiT: patches of 2 latent tokens a side on grids of 8 and more, of 1 below."""
    return dict(
        num_layers=6,
        num_attention_heads=4,
        attention_head_dim=32,
        patch_size=2 if grid_size >= 8 and grid_size % 2 == 0 else 1,
    )


def _latent_interface(tokenizer: UniFlowModel, num_classes: int) -> dict[str, int]:
    """The DiT config entries that follow from the tokenizer and the dataset, not from the generator's size."""
    latent_channels = tokenizer.config.latent_channels
    return dict(
        in_channels=latent_channels,
        out_channels=latent_channels,
        sample_size=tokenizer.config.grid_size,
        num_embeds_ada_norm=num_classes,
    )


def build_generator_transformer(
    tokenizer: UniFlowModel, num_classes: int, **transformer_kwargs
) -> DiTTransformer2DModel:
    """A `DiTTransformer2DModel` over `tokenizer`'s latent grid that predicts the velocity: `in_channels` =
    `out_channels` = latent channels, `sample_size` = grid size, `num_embeds_ada_norm` = `num_classes` (the id
    `num_classes` is the null class). `transformer_kwargs` override the size (`num_layers`, `num_attention_heads`,
    `attention_head_dim`, `patch_size`...)."""
    fixed = _latent_interface(tokenizer, num_classes)
    if fixed.keys() & transformer_kwargs.keys():
        raise ValueError(f"{sorted(fixed.keys() & transformer_kwargs.keys())} follow from the tokenizer and the dataset.")
    grid_size = fixed["sample_size"]
    kwargs = {**default_transformer_kwargs(grid_size), **transformer_kwargs}
    if grid_size % kwargs["patch_size"]:
        raise ValueError(f"patch_size {kwargs['patch_size']} does not divide the latent grid size {grid_size}.")
    return DiTTransformer2DModel(**fixed, **kwargs)


def load_generator_transformer(
    source: DiTTransformer2DModel | str | os.PathLike, tokenizer: UniFlowModel, num_classes: int
) -> DiTTransformer2DModel:
    """The DiT to continue training: `source` itself, or loaded from a transformer folder or a pipeline folder (its
    `transformer/`). Its latent shape and class count must be those of `tokenizer` and the dataset."""
    if not isinstance(source, DiTTransformer2DModel):
        folder = os.fspath(source)
        if os.path.isfile(os.path.join(folder, "transformer", "config.json")):
            folder = os.path.join(folder, "transformer")
        class_name = None
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no file, not JSON, not a JSON object
            with open(os.path.join(folder, "config.json")) as handle:
                class_name = json.load(handle).get("_class_name")
        if class_name != "DiTTransformer2DModel":
            raise ValueError(f"{folder} holds no DiT: pass a pipeline folder (with transformer/) or a transformer folder.")
        source = DiTTransformer2DModel.from_pretrained(folder)
    expected = _latent_interface(tokenizer, num_classes)
    found = {key: source.config[key] for key in expected}
    if found != expected:
        raise ValueError(f"The generator to continue has {found}; this tokenizer and dataset need {expected}.")
    return source


def deepen_generator_transformer(transformer: DiTTransformer2DModel, num_new_layers: int) -> DiTTransformer2DModel:
    """A DiT `num_new_layers` blocks deeper that computes exactly what `transformer` computes: each new block is a
    copy of the block before it with its two adaLN-Zero gates zeroed (the 3rd and 6th sixths of its modulation:
    shift, scale, gate of the attention, then of the MLP), so it adds nothing until training opens them. The copies
    follow evenly spaced blocks (6 blocks and 3 new ones: after the 2nd, 4th and 6th). `transformer` is unchanged."""
    check_num_inference_steps(num_new_layers, "num_new_layers")  # a positive integer
    num_layers, dim = transformer.config.num_layers, transformer.inner_dim
    copied = {round((j + 1) * num_layers / num_new_layers) - 1 for j in range(num_new_layers)}
    if len(copied) < num_new_layers:
        raise ValueError(f"At most {num_layers} new blocks (one after each block), got {num_new_layers}.")
    state = {key: value for key, value in transformer.state_dict().items() if not key.startswith("transformer_blocks.")}
    position = 0
    for index, block in enumerate(transformer.transformer_blocks):
        for is_copy in (False, True) if index in copied else (False,):
            block_state = {key: value.clone() for key, value in block.state_dict().items()}
            if is_copy:
                for name in ("weight", "bias"):
                    block_state[f"norm1.linear.{name}"][2 * dim : 3 * dim] = 0
                    block_state[f"norm1.linear.{name}"][5 * dim : 6 * dim] = 0
            state.update({f"transformer_blocks.{position}.{key}": value for key, value in block_state.items()})
            position += 1
    deeper = DiTTransformer2DModel.from_config({**transformer.config, "num_layers": num_layers + num_new_layers})
    deeper.load_state_dict(state)
    deeper.to(transformer.device).train(transformer.training)
    return deeper if deeper.dtype == transformer.dtype else deeper.to(dtype=transformer.dtype)


def dataset_id2label(dataset, label_column: str) -> dict[int, str]:
    """Class names from a `ClassLabel` column, or the ids themselves as names for an integer column."""
    from datasets import ClassLabel

    if label_column not in dataset.column_names:
        raise ValueError(f"No label column {label_column!r} in the dataset; its columns are {dataset.column_names}.")
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return dict(enumerate(feature.names))
    labels = list(dataset[label_column])
    if not all(isinstance(label, int) and not isinstance(label, bool) and label >= 0 for label in labels):
        raise ValueError(f"The label column {label_column!r} must be a ClassLabel or hold non-negative int ids.")
    return {class_id: str(class_id) for class_id in range(max(labels) + 1)}


@torch.no_grad()
def encode_dataset(
    tokenizer: UniFlowModel, dataset, image_column: str, batch_size: int = 64, device: torch.device | None = None
) -> torch.Tensor:
    """Latents (num_images, tokens, latent_channels) of every image of `dataset` (float32, on the CPU)."""
    if image_column not in dataset.column_names:
        raise ValueError(f"No image column {image_column!r} in the dataset; its columns are {dataset.column_names}.")
    processor = default_image_processor(tokenizer)
    device = device or tokenizer.device
    latents = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="Encoding images"):
        images = dataset[start : start + batch_size][image_column]
        pixel_values = processor(images, return_tensors="pt").pixel_values.to(device=device, dtype=tokenizer.dtype)
        latents.append(tokenizer.encode(pixel_values).float().cpu())
    return torch.cat(latents)


def latent_statistics(latents: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of latents (..., latent_channels)."""
    flat = latents.reshape(-1, latents.shape[-1]).double()
    return flat.mean(0).tolist(), flat.std(0).clamp_min(1e-6).tolist()


def _label_embeddings(transformer: torch.nn.Module) -> list[LabelEmbedding]:
    """diffusers' `LabelEmbedding`s of a DiT (one per block). In train mode each drops labels by itself, with the
    global RNG and independently per block; training turns that off and drops each sample's label once, seeded."""
    return [module for module in transformer.modules() if isinstance(module, LabelEmbedding)]


def train_generator(
    tokenizer: UniFlowModel | str | os.PathLike,
    dataset,
    image_column: str = "image",
    label_column: str = "label",
    output_dir: str | os.PathLike | None = None,
    num_train_steps: int = 1000,
    batch_size: int = 64,
    learning_rate: float = 3e-4,
    label_dropout: float = 0.1,
    seed: int = 0,
    transformer_kwargs: dict[str, Any] | None = None,
    ema_decay: float | None = None,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    encode_batch_size: int = 64,
    mixed_precision: str = "no",
    progress: bool = True,
    decoder_num_inference_steps: int | None = None,
    solver: str = "euler",
    euler_at_final: bool = False,
    guidance_scale: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    guidance_rescale: float | None = None,
    init_transformer: DiTTransformer2DModel | str | os.PathLike | None = None,
    add_layers: int = 0,
    lr_scheduler_type: str = "constant",
    warmup_steps: int = 0,
    noise_scheduler: UniFlowFlowMatchScheduler | None = None,
) -> GeneratorTrainingOutput:
    """Train a `DiTTransformer2DModel` to generate `tokenizer` latents of the classes of `dataset`.

    Args:
        tokenizer (`UniFlowModel` or a folder): the frozen UniFlow tokenizer.
        dataset (`datasets.Dataset`): images in `image_column` (PIL images or arrays) and labels in `label_column`
            (a `ClassLabel`, whose names become the pipeline's `id2label`, or non-negative ints).
        output_dir (*optional*): where to save the `UniFlowClassConditionalPipeline` folder.
        num_train_steps, batch_size, learning_rate, weight_decay, max_grad_norm: the AdamW optimisation.
        lr_scheduler_type (`str`, defaults to `"constant"`), warmup_steps (`int`, defaults to 0): the learning-rate
            schedule over the `num_train_steps` (transformers' `get_scheduler`, as the `Trainer` arguments of the
            same names): `"constant"`, `"constant_with_warmup"`, `"linear"` or `"cosine"` (both decay to 0), after
            `warmup_steps` of linear warm-up. A decay to 0 suits a last stage that continues `init_transformer`.
        label_dropout (`float`, defaults to 0.1): probability of training a sample as the null class (for
            classifier-free guidance).
        seed (`int`): seeds the weights, the batches, the noise, the times and the label dropout.
        transformer_kwargs (`dict`, *optional*): size of the DiT (see `build_generator_transformer`).
        ema_decay (`float`, *optional*): keep an exponential moving average of the weights (diffusers' `EMAModel`,
            with its warm-up) and save that.
        mixed_precision (`str`): Accelerate's `"no"`, `"fp16"` or `"bf16"` (GPU only).
        decoder_num_inference_steps (`int`, *optional*): the pipeline's default decoder steps when generating
            (the tokenizer's `num_sampling_steps` when `None`).
        solver (`str`, defaults to `"euler"`): the solver of the saved pipeline's latent-flow scheduler, `"euler"`
            or `"heun"` (two network calls a step, more accurate at the same steps).
        euler_at_final (`bool`, defaults to `False`): with `"heun"`, the saved scheduler ends with a plain Euler step
            (no network call at t = 1; see `UniFlowFlowMatchScheduler`).
        guidance_scale, guidance_interval, guidance_rescale (*optional*): the saved pipeline's default
            classifier-free guidance, the flow times it applies in and its rescaling (see
            `UniFlowClassConditionalPipeline`).
        init_transformer (*optional*): continue training this DiT (a module, trained in place, or a transformer or
            pipeline folder) instead of a new one, e.g. in stages that each fit a time budget; give the stage another
            `seed` than the last, or it replays the same batches. Not with `transformer_kwargs`.
        add_layers (`int`, defaults to 0): with `init_transformer`, first deepen that DiT by this many blocks that
            start as the identity (`deepen_generator_transformer`): a larger generator that continues from what the
            smaller one learnt. A module passed as `init_transformer` is then left as it was.
        noise_scheduler (`UniFlowFlowMatchScheduler`, *optional*): draws the training flow times
            (`sample_training_timesteps`, from its `training_timestep_distribution`, `logit_mean`, `logit_std` and
            `uniform_fraction`) and noises the latents. Defaults to `UniFlowFlowMatchScheduler()`, the release's
            logit-normal centred at t = 0.5 with 10 % uniform times; a positive `logit_mean` trains more near the
            data (t = 1).

    Returns:
        [`GeneratorTrainingOutput`] with the pipeline and the loss of every step.
    """
    if not 0 <= label_dropout < 1:
        raise ValueError(f"`label_dropout` must be in [0, 1), got {label_dropout}.")
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ValueError(f"`ema_decay` must be in (0, 1) (e.g. 0.999) or None for no average, got {ema_decay}.")
    for name, value in (("num_train_steps", num_train_steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    check_lr_schedule(lr_scheduler_type, warmup_steps, num_train_steps)
    if len(dataset) == 0:
        raise ValueError("The dataset is empty.")
    check_num_inference_steps(decoder_num_inference_steps, "decoder_num_inference_steps", allow_none=True)
    sampling_defaults = dict(
        decoder_num_inference_steps=decoder_num_inference_steps,
        guidance_scale=check_guidance_scale(guidance_scale),
        guidance_interval=check_guidance_interval(guidance_interval),
        guidance_rescale=check_guidance_rescale(guidance_rescale),
    )
    if init_transformer is not None and transformer_kwargs:
        raise ValueError("`transformer_kwargs` size a new DiT; with `init_transformer` the size is that DiT's.")
    if not isinstance(add_layers, int) or isinstance(add_layers, bool) or add_layers < 0:
        raise ValueError(f"`add_layers` must be a non-negative integer, got {add_layers!r}.")
    if add_layers and init_transformer is None:
        raise ValueError(
            "`add_layers` deepens the DiT given as `init_transformer`; a new DiT is sized by `transformer_kwargs`."
        )
    # checked before the training, saved after it
    sampling_scheduler = UniFlowFlowMatchScheduler(solver=solver, euler_at_final=euler_at_final)
    if noise_scheduler is None:
        noise_scheduler = UniFlowFlowMatchScheduler()
    elif not isinstance(noise_scheduler, UniFlowFlowMatchScheduler):
        raise TypeError(
            "`noise_scheduler` must be a UniFlowFlowMatchScheduler (it draws the training flow times), got "
            f"{type(noise_scheduler).__name__}."
        )

    accelerator = Accelerator(mixed_precision=mixed_precision)
    set_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(tokenizer, UniFlowModel):
        tokenizer = UniFlowModel.from_pretrained(tokenizer)
    tokenizer.eval().requires_grad_(False).to(accelerator.device)

    id2label = dataset_id2label(dataset, label_column)
    num_classes = len(id2label)
    labels = torch.tensor(list(dataset[label_column]), dtype=torch.long)
    latents = encode_dataset(tokenizer, dataset, image_column, encode_batch_size, accelerator.device)
    latent_mean, latent_std = latent_statistics(latents)
    mean = torch.tensor(latent_mean).reshape(1, -1, 1, 1)
    std = torch.tensor(latent_std).reshape(1, -1, 1, 1)
    data = (latents_to_grid(latents, tokenizer.config.grid_size) - mean) / std

    if init_transformer is None:
        transformer = build_generator_transformer(tokenizer, num_classes, **(transformer_kwargs or {}))
    else:
        transformer = load_generator_transformer(init_transformer, tokenizer, num_classes)
        if add_layers:
            transformer = deepen_generator_transformer(transformer, add_layers)
    label_embeddings = _label_embeddings(transformer)
    builtin_dropout = [module.dropout_prob for module in label_embeddings]
    for module in label_embeddings:
        module.dropout_prob = 0.0
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=learning_rate, weight_decay=weight_decay)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    # not prepared by Accelerate, which would step it once per process: one step per optimisation step
    lr_scheduler = get_scheduler(
        lr_scheduler_type, optimizer, num_warmup_steps=warmup_steps, num_training_steps=num_train_steps
    )
    ema = EMAModel(transformer.parameters(), decay=ema_decay) if ema_decay is not None else None

    transformer.train()
    losses = []
    order = torch.empty(0, dtype=torch.long)
    progress_bar = tqdm(range(num_train_steps), desc="Training generator", disable=not progress)
    for _ in progress_bar:
        if len(order) < batch_size:  # epochs of shuffled indices; the last partial one runs on into the next
            epochs = math.ceil(batch_size / len(data)) + 1
            order = torch.cat([order] + [torch.randperm(len(data), generator=generator) for _ in range(epochs)])
        indices, order = order[:batch_size], order[batch_size:]
        batch_labels = labels[indices]
        dropped = torch.rand(batch_size, generator=generator) < label_dropout
        batch_labels = torch.where(dropped, num_classes, batch_labels).to(accelerator.device)
        sample = data[indices].to(accelerator.device)
        noise = torch.randn(sample.shape, generator=generator).to(accelerator.device)
        timesteps = noise_scheduler.sample_training_timesteps(batch_size, generator=generator).to(accelerator.device)

        with accelerator.autocast():
            velocity = transformer(
                noise_scheduler.add_noise(sample, noise, timesteps), timestep=timesteps, class_labels=batch_labels
            ).sample
        loss = F.mse_loss(velocity.float(), noise_scheduler.get_velocity(sample, noise).float())
        accelerator.backward(loss)
        if max_grad_norm:
            accelerator.clip_grad_norm_(transformer.parameters(), max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(transformer.parameters())
        losses.append(loss.item())
        progress_bar.set_postfix(loss=f"{losses[-1]:.4f}")

    transformer = accelerator.unwrap_model(transformer)
    if ema is not None:
        ema.copy_to(transformer.parameters())
    for module, probability in zip(label_embeddings, builtin_dropout):
        module.dropout_prob = probability
    transformer.eval()

    pipeline = UniFlowClassConditionalPipeline(
        transformer=transformer,
        scheduler=sampling_scheduler,
        tokenizer=tokenizer,
        decoder_scheduler=UniFlowFlowMatchScheduler(schedule=tokenizer.config.sampling_schedule),
        id2label=id2label,
        latent_mean=latent_mean,
        latent_std=latent_std,
        **sampling_defaults,
    )
    if output_dir is not None and accelerator.is_main_process:
        pipeline.save_pretrained(output_dir)
    return GeneratorTrainingOutput(pipeline=pipeline, losses=losses)


def attach_guide(
    pipeline: UniFlowClassConditionalPipeline | str | os.PathLike,
    guide: UniFlowClassConditionalPipeline | str | os.PathLike,
    autoguidance_scale: float,
    autoguidance_interval: tuple[float, float] | None = None,
) -> UniFlowClassConditionalPipeline:
    """`pipeline` with the DiT of `guide` as its `guide_transformer` and the given autoguidance as its default.

    `guide` (a pipeline or its folder, e.g. a smaller DiT trained for fewer steps by `train_generator`) must have been
    trained on the same latents: the same classes and the same latent statistics, which `train_generator` measures
    from the tokenizer's latents of the dataset. Its own tokenizer and settings are not used."""
    pipeline, guide = (
        value if isinstance(value, UniFlowClassConditionalPipeline)
        else UniFlowClassConditionalPipeline.from_pretrained(os.fspath(value))
        for value in (pipeline, guide)
    )
    for key in ("id2label", "latent_mean", "latent_std"):
        ours, theirs = pipeline.config[key], guide.config[key]
        if isinstance(ours, list) and isinstance(theirs, list):  # statistics: equal up to float rounding
            same = len(ours) == len(theirs) and all(
                math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(ours, theirs)
            )
        else:
            same = ours == theirs
        if not same:
            raise ValueError(
                f"The guide was not trained on this pipeline's latents: its `{key}` is {theirs}, the pipeline's "
                f"{ours}. Train it with `train_generator` on the same tokenizer and dataset."
            )
    components = {name: module for name, module in pipeline.components.items() if name != "guide_transformer"}
    return UniFlowClassConditionalPipeline(
        **components,
        guide_transformer=guide.transformer,
        **{**pipeline.settings, "autoguidance_scale": autoguidance_scale, "autoguidance_interval": autoguidance_interval},
    )


__all__ = [
    "GeneratorTrainingOutput",
    "attach_guide",
    "LR_SCHEDULER_TYPES",
    "build_generator_transformer",
    "dataset_id2label",
    "deepen_generator_transformer",
    "encode_dataset",
    "latent_statistics",
    "load_generator_transformer",
    "train_generator",
]
