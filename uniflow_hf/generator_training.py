# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Train a class-conditional latent generator (a diffusers `DiTTransformer2DModel`) on a frozen UniFlow tokenizer.

The images of a labelled `datasets.Dataset` are encoded once with the frozen tokenizer into an on-disk latent cache
(`Dataset.map` into an Arrow file named by the tokenizer's and the dataset's fingerprints, memory-mapped), the latents are normalised per channel, and the
DiT learns the rectified flow from Gaussian noise (t = 0) to those latents (t = 1) by regressing the velocity
`latents - noise` at times drawn from the training distribution set by `GeneratorTrainingArguments`; labels are dropped
to the null class with probability `label_dropout` so that classifier-free guidance works. The `Trainer` runs it
(multi-process with torchrun / accelerate launch, gradient accumulation, mixed precision, checkpoints and resume,
trackers); the result is a complete `UniFlowClassConditionalPipeline`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from diffusers.training_utils import EMAModel
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .data import check_images
from .hardware import cpu_bf16_support
from .io import last_complete_checkpoint
from .modeling import UniFlowModel
from .modeling.configuration_uniflow import FLOW_TIMESTEP_DISTRIBUTIONS
from .pipelines import UniFlowClassConditionalPipeline, UniFlowFlowMatchScheduler
from .pipelines.pipeline_uniflow_class_conditional import check_sampling_setting, latents_to_grid
from .pipelines.pipeline_uniflow_utils import check_num_inference_steps, default_image_processor
from .training import prepare_training_arguments, sample_generator


@dataclass
class GeneratorTrainingArguments(TrainingArguments):
    """`TrainingArguments` for `train_generator` (and `uniflow-hf train-generator`): every `Trainer` option
    (`--max_steps`, `--gradient_accumulation_steps`, `--bf16`, `--save_steps`, `--resume_from_checkpoint`,
    `--report_to`...), with the generator's defaults for the learning rate, batch and schedule, and the options of
    the data, the DiT and the saved pipeline below."""

    learning_rate: float = field(default=3e-4, metadata={"help": "AdamW learning rate."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Samples per process and micro-batch."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "learning-rate schedule (transformers' SchedulerType), e.g. cosine"}
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "samples per optimisation step over all processes: sets --per_device_train_batch_size to it / "
            "(processes x gradient_accumulation_steps), which must divide it"
        },
    )
    train_sampling_strategy: str = field(
        default="sequential",
        metadata={
            "help": "read the training samples in order (the only choice: the stream decides every step's samples)",
            "choices": ["sequential"],
        },
    )
    image_column: str = field(default="image", metadata={"help": "the dataset column holding the images"})
    label_column: str = field(default="label", metadata={"help": "the dataset column holding the class labels"})
    latent_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "where the tokenizer's latents of the dataset are cached (reused by later runs of the same "
            "tokenizer and dataset; default: OUTPUT_DIR/latent_cache)"
        },
    )
    encode_batch_size: int = field(default=64, metadata={"help": "images per batch when encoding the latents"})
    label_dropout: float = field(
        default=0.1, metadata={"help": "probability of training a sample as the null class (for guidance)"}
    )
    ema_decay: float | None = field(
        default=None, metadata={"help": "save an exponential moving average of the weights (e.g. 0.999)"}
    )
    transformer_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": 'size of a new DiT as JSON, e.g. \'{"num_layers": 4, "attention_head_dim": 32}\''},
    )
    init_generator: str | None = field(
        default=None,
        metadata={"help": "continue training the DiT of this pipeline (or transformer) folder (use another --seed)"},
    )
    add_layers: int = field(
        default=0,
        metadata={
            "help": "with --init_generator: first deepen that DiT by N blocks that start as the identity, so the "
            "larger DiT starts where the smaller one ended"
        },
    )
    timestep_distribution: str | None = field(
        default=None,
        metadata={
            "help": "training flow times (default fat_lognormal, the release's: a logit-normal with a share of "
            "uniform times)",
            "choices": list(FLOW_TIMESTEP_DISTRIBUTIONS),
        },
    )
    timestep_logit_mean: float | None = field(
        default=None, metadata={"help": "mean of the logit-normal (default 0; > 0 trains more near the data, t = 1)"}
    )
    timestep_logit_std: float | None = field(default=None, metadata={"help": "its standard deviation (default 1)"})
    timestep_uniform_fraction: float | None = field(
        default=None, metadata={"help": "share of uniform times in fat_lognormal (default 0.1)"}
    )
    solver: str = field(
        default="euler", metadata={"help": "the saved pipeline's solver of the latent flow", "choices": ["euler", "heun"]}
    )
    euler_at_final: bool = field(
        default=False, metadata={"help": "with heun: end with a plain Euler step (no network call at t = 1)"}
    )
    decoder_num_inference_steps: int | None = field(
        default=None,
        metadata={
            "help": "the pipeline's default steps of the pixel decoder (default: the tokenizer's)",
            "aliases": ["--decoder-steps"],
        },
    )
    guidance_scale: float | None = field(
        default=None, metadata={"help": "the pipeline's default classifier-free guidance (default: 1.5)"}
    )
    guidance_interval: list[float] | None = field(
        default=None, metadata={"help": "guide only at flow times T_START T_END (0 = noise, 1 = data)"}
    )
    guidance_rescale: float | None = field(
        default=None, metadata={"help": "the pipeline's default guidance rescale in [0, 1]"}
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.transformer_kwargs, str):
            try:
                self.transformer_kwargs = json.loads(self.transformer_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(f"`transformer_kwargs` is not valid JSON: {error}") from error
        if self.transformer_kwargs is not None and not isinstance(self.transformer_kwargs, dict):
            raise ValueError(f"`transformer_kwargs` must be a JSON object, got {self.transformer_kwargs!r}.")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"`label_dropout` must be in [0, 1), got {self.label_dropout}.")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in (0, 1) (e.g. 0.999) or None for no average, got {self.ema_decay}.")
        for name in ("global_batch_size", "encode_batch_size"):
            check_num_inference_steps(getattr(self, name), name, allow_none=True)  # a positive integer
        if self.init_generator is not None and self.transformer_kwargs:
            raise ValueError("`transformer_kwargs` size a new DiT; with `init_generator` the size is that DiT's.")
        if not isinstance(self.add_layers, int) or isinstance(self.add_layers, bool) or self.add_layers < 0:
            raise ValueError(f"`add_layers` must be a non-negative integer, got {self.add_layers!r}.")
        if self.train_sampling_strategy != "sequential":
            raise ValueError(
                f"`train_sampling_strategy` must be 'sequential' (the training stream shuffles the images and decides "
                f"every step's samples itself), got {self.train_sampling_strategy!r}."
            )
        if self.warmup_steps and self.lr_scheduler_type == "constant":
            raise ValueError("`lr_scheduler_type='constant'` has no warm-up; use 'constant_with_warmup' for `warmup_steps`.")
        self.training_noise_scheduler()  # checks the timestep settings
        UniFlowFlowMatchScheduler(solver=self.solver, euler_at_final=self.euler_at_final)
        self.pipeline_settings()

    def training_noise_scheduler(self) -> UniFlowFlowMatchScheduler:
        """The scheduler that draws the training flow times (`sample_training_timesteps`) and noises the latents."""
        names = ("timestep_distribution", "timestep_logit_mean", "timestep_logit_std", "timestep_uniform_fraction")
        values = {name: getattr(self, name) for name in names}
        return UniFlowFlowMatchScheduler(**{name: value for name, value in values.items() if value is not None})

    def pipeline_settings(self) -> dict[str, Any]:
        """The saved pipeline's default sampling settings (checked)."""
        names = ("decoder_num_inference_steps", "guidance_scale", "guidance_interval", "guidance_rescale")
        return {name: check_sampling_setting(name, getattr(self, name)) for name in names}


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


def _encode_images(tokenizer: UniFlowModel, processor, images) -> torch.Tensor:
    """Latents (batch, tokens, latent_channels) of a batch of images (float32, on the CPU)."""
    pixel_values = processor(images, return_tensors="pt").pixel_values
    with torch.no_grad():
        return tokenizer.encode(pixel_values.to(device=tokenizer.device, dtype=tokenizer.dtype)).float().cpu()


def _check_image_column(dataset, image_column: str) -> None:
    if image_column not in dataset.column_names:
        raise ValueError(f"No image column {image_column!r} in the dataset; its columns are {dataset.column_names}.")


def encode_dataset(tokenizer: UniFlowModel, dataset, image_column: str, batch_size: int = 64) -> torch.Tensor:
    """Latents (num_images, tokens, latent_channels) of every image of `dataset` (float32, on the CPU)."""
    _check_image_column(dataset, image_column)
    processor = default_image_processor(tokenizer)
    return torch.cat([
        _encode_images(tokenizer, processor, dataset[start : start + batch_size][image_column])
        for start in range(0, len(dataset), batch_size)
    ])


def latent_statistics(latents) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of latents (..., latent_channels): one tensor, or an iterable of
    tensors (batches of a dataset too large to hold at once)."""
    count, total, total_of_squares = 0, 0.0, 0.0
    for batch in [latents] if isinstance(latents, torch.Tensor) else latents:
        flat = batch.reshape(-1, batch.shape[-1]).double()
        count, total, total_of_squares = count + len(flat), total + flat.sum(0), total_of_squares + flat.square().sum(0)
    mean = total / count
    variance = (total_of_squares - count * mean.square()) / max(count - 1, 1)
    return mean.tolist(), variance.clamp_min(0).sqrt().clamp_min(1e-6).tolist()


def _label_embeddings(transformer: nn.Module) -> list[LabelEmbedding]:
    """diffusers' `LabelEmbedding`s of a DiT (one per block). In train mode each drops labels by itself, with the
    global RNG and independently per block; training turns that off and drops each sample's label once, seeded."""
    return [module for module in transformer.modules() if isinstance(module, LabelEmbedding)]


# ------------------------------------------------------------------------------------------------ latent cache
def tokenizer_fingerprint(tokenizer: UniFlowModel) -> str:
    """A hash of what decides a tokenizer's latents: its config (less bookkeeping entries), its image processor and
    every weight (the distillation teacher aside)."""
    digest = hashlib.sha256()
    config = {
        key: value for key, value in tokenizer.config.to_dict().items()
        if not key.startswith("_")
        and key not in ("architectures", "auto_map", "dtype", "torch_dtype", "transformers_version")
    }
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(default_image_processor(tokenizer).to_json_string().encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        if name.startswith("distillation_teacher."):
            continue
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass
class LatentCache:
    """
    Args:
        latents (`datasets.Dataset`): columns `latents` (tokens, latent_channels) float32 and `label`, one row per
            image in the dataset's order, memory-mapped from the cache file (in torch format).
        latent_mean, latent_std (`list[float]`): per-channel statistics of all the latents.
    """

    latents: Any
    latent_mean: list[float]
    latent_std: list[float]


def latent_cache_fingerprint(tokenizer: UniFlowModel, dataset, image_column: str, label_column: str) -> str:
    """The `datasets` fingerprint of the latents: a hash of the tokenizer (`tokenizer_fingerprint`), of the dataset
    (its own fingerprint) and of the columns read, so that another tokenizer or dataset never reuses them."""
    key = [tokenizer_fingerprint(tokenizer), dataset._fingerprint, image_column, label_column]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]


def _check_cache_folder(cache_dir: str) -> None:
    """Refuse, before any work, a latent cache folder that cannot be made or written."""
    try:
        os.makedirs(os.path.dirname(cache_dir), exist_ok=True)
    except OSError as error:
        raise ValueError(f"Cannot create the latent cache folder {cache_dir}: {error}") from error
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise ValueError(f"Cannot create the latent cache folder {cache_dir}: a file has that name.")
    folder = cache_dir if os.path.isdir(cache_dir) else os.path.dirname(cache_dir)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"Cannot write the latent cache {cache_dir}: the folder {folder} is not writable.")


def build_latent_cache(
    tokenizer: UniFlowModel, dataset, args: GeneratorTrainingArguments, cache_dir: str | os.PathLike
) -> LatentCache:
    """The tokenizer's latents of every image of `dataset`, with the labels: `dataset.map` encodes them
    (`args.encode_batch_size` images at a time) into the Arrow file `cache_dir/latents-FINGERPRINT.arrow`,
    memory-mapped (processes read it without a copy in their memory), and the per-channel statistics are read from it.

    The fingerprint (`latent_cache_fingerprint`) hashes the tokenizer's weights and config and the dataset's
    fingerprint: a later run of the same tokenizer on the same dataset reuses the file without encoding, another
    tokenizer or dataset gets a file of its own. `datasets` writes the file under a temporary name and renames it once
    complete, so a run killed while encoding leaves no half-written cache. Before encoding, the folder is checked to be
    writable and every image is opened (`data.check_images`), so that an unreadable one stops the build, named.
    Under several processes the main process encodes (`main_process_first`) and the others then read its file, so
    `cache_dir` must be on a filesystem they share."""
    from accelerate import PartialState
    from datasets import Array2D, Features, Value

    _check_image_column(dataset, args.image_column)
    fingerprint = latent_cache_fingerprint(tokenizer, dataset, args.image_column, args.label_column)
    cache_dir = os.path.abspath(os.fspath(cache_dir))
    cache_file = os.path.join(cache_dir, f"latents-{fingerprint}.arrow")
    if not os.path.isfile(cache_file):  # every process checks, before any of them waits for another
        _check_cache_folder(cache_dir)
        check_images(dataset, args.image_column)  # an unreadable image, named, before any encoding
    processor = default_image_processor(tokenizer)
    shape = (tokenizer.config.grid_size**2, tokenizer.config.latent_channels)

    def encode(images, labels):
        return {"latents": _encode_images(tokenizer, processor, images).numpy(), "label": labels}

    state = PartialState()
    with state.main_process_first():  # the others wait, then find the main process's file
        os.makedirs(cache_dir, exist_ok=True)
        latents = dataset.map(
            encode,
            batched=True,
            batch_size=args.encode_batch_size,
            input_columns=[args.image_column, args.label_column],
            remove_columns=dataset.column_names,
            features=Features({"latents": Array2D(shape, "float32"), "label": Value("int64")}),
            cache_file_name=cache_file,
            load_from_cache_file=True,
            new_fingerprint=fingerprint,
            desc="Encoding images",
        ).with_format("torch")
    mean, std = latent_statistics(batch["latents"] for batch in latents.iter(batch_size=args.encode_batch_size))
    return LatentCache(latents, mean, std)


# ------------------------------------------------------------------------------------------------ the training
class GeneratorTrainingStream(torch.utils.data.Dataset):
    """The training samples of the whole run, in order: item `position` belongs to optimisation step
    `position // global_batch_size`, as that step's sample number `position % global_batch_size`.

    The image is the next one of the run's epochs of shuffled images (`sample_generator(seed, 0, epoch)` shuffles
    epoch `epoch`; the last partial global batch of an epoch runs on into the next). The image's noise, flow time and
    label dropout are drawn from `sample_generator(seed, 1, step, sample number)`. Nothing depends on the number of
    processes or on how a step's samples are split between them and over accumulation steps: N processes at
    per-device batch B train on exactly the samples of 1 process at batch N·B, and a resumed run on those it would
    have seen.

    An item is a dict of `latents` (normalised, (C, grid, grid)), `noise` (same shape), `timesteps` (network time,
    1000·t) and `class_labels` (the null class `num_classes` where dropped)."""

    def __init__(
        self,
        cache: LatentCache,
        grid_size: int,
        num_classes: int,
        num_steps: int,
        global_batch_size: int,
        noise_scheduler: UniFlowFlowMatchScheduler,
        label_dropout: float,
        seed: int,
    ):
        self.cache = cache
        self.grid_size = grid_size
        self.num_classes = num_classes
        self.num_steps = num_steps
        self.global_batch_size = global_batch_size
        self.noise_scheduler = noise_scheduler
        self.label_dropout = label_dropout
        self.seed = seed
        self.mean = torch.tensor(cache.latent_mean).reshape(1, -1, 1, 1)
        self.std = torch.tensor(cache.latent_std).reshape(1, -1, 1, 1)
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.num_steps * self.global_batch_size

    def image_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.cache.latents))
        if epoch not in self._orders:
            generator = sample_generator(self.seed, 0, epoch)
            self._orders = {epoch: torch.randperm(len(self.cache.latents), generator=generator)}
        return int(self._orders[epoch][offset])

    def __getitems__(self, positions: list[int]) -> list[dict[str, torch.Tensor]]:
        rows = self.cache.latents[[self.image_index(position) for position in positions]]
        latents = (latents_to_grid(rows["latents"], self.grid_size) - self.mean) / self.std
        items = []
        for position, sample, label in zip(positions, latents, rows["label"].tolist()):
            generator = sample_generator(self.seed, 1, *divmod(position, self.global_batch_size))
            noise = torch.randn(sample.shape, generator=generator)
            timestep = self.noise_scheduler.sample_training_timesteps(1, generator=generator)[0]
            dropped = torch.rand((), generator=generator).item() < self.label_dropout
            class_label = torch.tensor(self.num_classes if dropped else label)
            items.append({"latents": sample, "noise": noise, "timesteps": timestep, "class_labels": class_label})
        return items

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([position])[0]


class GeneratorFlowMatchingModel(nn.Module):
    """The DiT with its training loss, as the `Trainer` trains it: the mean squared error of the velocity it predicts
    at `noise_scheduler.add_noise(latents, noise, timesteps)` against `latents - noise`."""

    def __init__(self, transformer: DiTTransformer2DModel, noise_scheduler: UniFlowFlowMatchScheduler):
        super().__init__()
        self.transformer = transformer
        self.noise_scheduler = noise_scheduler

    def forward(self, latents, noise, timesteps, class_labels) -> dict[str, torch.Tensor]:
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        velocity = self.transformer(noisy, timestep=timesteps, class_labels=class_labels).sample
        return {"loss": F.mse_loss(velocity.float(), self.noise_scheduler.get_velocity(latents, noise).float())}


class GeneratorTrainer(Trainer):
    """A `Trainer` for `GeneratorFlowMatchingModel` on a `GeneratorTrainingStream` (read in order:
    `train_sampling_strategy="sequential"`, so that the stream decides the samples of each step) that keeps the loss
    of every micro-batch for `step_losses`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._micro_batch_losses: list[torch.Tensor] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            self._micro_batch_losses.append(loss.detach().float())
        return (loss, outputs) if return_outputs else loss

    def step_losses(self) -> list[float]:
        """The loss of every optimisation step this trainer ran, averaged over its micro-batches and processes."""
        if not self._micro_batch_losses:
            return []
        losses = torch.stack(self._micro_batch_losses).reshape(-1, self.args.gradient_accumulation_steps).mean(1)
        return self.accelerator.reduce(losses.to(self.args.device), reduction="mean").cpu().tolist()


class _EMACallback(TrainerCallback):
    """Steps an `EMAModel` after every optimisation step and saves it in every checkpoint (`ema.pt`)."""

    def __init__(self, ema: EMAModel, parameters: list[nn.Parameter]):
        self.ema = ema
        self.parameters = parameters

    def on_step_end(self, args, state, control, **kwargs):
        self.ema.step(self.parameters)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            torch.save(self.ema.state_dict(), os.path.join(folder, EMA_STATE_NAME))


EMA_STATE_NAME = "ema.pt"


def _check_precision(args: GeneratorTrainingArguments) -> None:
    if args.device.type != "cpu":
        return
    if args.fp16:
        raise ValueError(
            "fp16 mixed precision needs a GPU: drop --fp16 (or use --bf16 on a CPU with bfloat16 support)."
        )
    if not args.bf16:
        return
    fast_bf16, why = cpu_bf16_support()
    if not fast_bf16:
        raise ValueError(
            f"This CPU has no bfloat16 arithmetic, so --bf16 would run emulated ({why}). Drop --bf16 here, or train "
            "on a GPU or a CPU with bfloat16 support."
        )


def _set_batch_and_steps(args: GeneratorTrainingArguments, num_images: int) -> int:
    """Check the global batch against the launch, set `per_device_train_batch_size` and `max_steps`; return the
    global batch size."""
    world_size, accumulation = args.world_size, args.gradient_accumulation_steps
    if args.global_batch_size is not None:
        if args.global_batch_size % (world_size * accumulation):
            raise ValueError(
                f"`global_batch_size` {args.global_batch_size} does not divide into {world_size} process(es) x "
                f"{accumulation} accumulation step(s): launch a number of processes and pick "
                "`gradient_accumulation_steps` whose product divides it."
            )
        per_device = args.global_batch_size // (world_size * accumulation)
        default = GeneratorTrainingArguments.__dataclass_fields__["per_device_train_batch_size"].default
        if args.per_device_train_batch_size not in (default, per_device):
            raise ValueError(
                f"`per_device_train_batch_size` {args.per_device_train_batch_size} disagrees with `global_batch_size` "
                f"{args.global_batch_size} over {world_size} process(es) x {accumulation} accumulation step(s) "
                f"({per_device}); pass only one of them."
            )
        args.per_device_train_batch_size = per_device
    global_batch_size = world_size * args.per_device_train_batch_size * accumulation
    if args.max_steps <= 0:
        args.max_steps = max(1, math.ceil(args.num_train_epochs * num_images / global_batch_size))
    if args.warmup_steps >= max(1, args.max_steps):  # below 1 it is a share of the steps
        raise ValueError(
            f"`warmup_steps` ({args.warmup_steps:g}) must be below the number of steps ({args.max_steps})."
        )
    return global_batch_size


def _resume_folder(args: GeneratorTrainingArguments, resume_from_checkpoint: str | bool | None) -> str | None:
    """True: the last completely written checkpoint (with its EMA state when the run averages one)."""
    if resume_from_checkpoint is True:
        required = (EMA_STATE_NAME,) if args.ema_decay is not None else ()
        return last_complete_checkpoint(args.output_dir, required_files=required)
    return os.fspath(resume_from_checkpoint) if resume_from_checkpoint else None


def train_generator(
    tokenizer: UniFlowModel | str | os.PathLike,
    dataset,
    args: GeneratorTrainingArguments,
    transformer: DiTTransformer2DModel | None = None,
    resume_from_checkpoint: str | bool | None = None,
    callbacks: list[TrainerCallback] | None = None,
    save_pipeline: bool = True,
) -> GeneratorTrainingOutput:
    """Train a `DiTTransformer2DModel` to generate `tokenizer` latents of the classes of `dataset` with the
    `Trainer`, and return (and save to `args.output_dir`) the `UniFlowClassConditionalPipeline`.

    The latents are encoded once into an on-disk cache (`build_latent_cache`, at `args.latent_cache_dir`); the
    samples, noise, flow times and label dropout of every step are those of `GeneratorTrainingStream`: under
    `torchrun --nproc_per_node N` each process trains on its own part of every global batch, and the run equals one
    process with the whole global batch. Checkpoints (`save_steps`...) hold the EMA weights too, and resuming one
    (`resume_from_checkpoint`) continues on the same losses.

    Args:
        tokenizer (`UniFlowModel` or a folder): the frozen UniFlow tokenizer.
        dataset (`datasets.Dataset`): images in `args.image_column` (PIL images or arrays) and labels in
            `args.label_column` (a `ClassLabel`, whose names become the pipeline's `id2label`, or non-negative ints).
        args ([`GeneratorTrainingArguments`]): the training, the DiT and the saved pipeline's settings.
        transformer (`DiTTransformer2DModel`, *optional*): train this DiT (in place) instead of a new one or
            `args.init_generator`; deepened first by `args.add_layers` (a copy then, the module left as it was).
        resume_from_checkpoint (*optional*): a checkpoint folder, or `True` for the latest in `args.output_dir`
            (default: `args.resume_from_checkpoint`).
        callbacks (*optional*): more `TrainerCallback`s.
        save_pipeline (`bool`, defaults to `True`): save the pipeline to `args.output_dir`.

    Returns:
        [`GeneratorTrainingOutput`] with the pipeline and the loss of every step this call ran.
    """
    if not isinstance(args, GeneratorTrainingArguments):
        raise TypeError(f"`args` must be GeneratorTrainingArguments, got {type(args).__name__}.")
    if transformer is not None and (args.init_generator or args.transformer_kwargs):
        raise ValueError(
            "Pass the DiT to train as `transformer` or as `init_generator`/`transformer_kwargs`, not both."
        )
    if args.add_layers and transformer is None and args.init_generator is None:
        raise ValueError(
            "`add_layers` deepens the DiT given as `init_generator`; a new DiT is sized by `transformer_kwargs`."
        )
    if len(dataset) == 0:
        raise ValueError("The dataset is empty.")
    prepare_training_arguments(args)
    _check_precision(args)
    global_batch_size = _set_batch_and_steps(args, len(dataset))
    if resume_from_checkpoint is None:
        resume_from_checkpoint = args.resume_from_checkpoint
    resume_folder = _resume_folder(args, resume_from_checkpoint)

    if not isinstance(tokenizer, UniFlowModel):
        tokenizer = UniFlowModel.from_pretrained(tokenizer)
    tokenizer.eval().requires_grad_(False).to(args.device)
    id2label = dataset_id2label(dataset, args.label_column)
    num_classes = len(id2label)
    cache_dir = args.latent_cache_dir or os.path.join(args.output_dir, "latent_cache")
    cache = build_latent_cache(tokenizer, dataset, args, cache_dir)

    set_seed(args.seed)  # the same new DiT in every process
    if transformer is None and args.init_generator is None:
        transformer = build_generator_transformer(tokenizer, num_classes, **(args.transformer_kwargs or {}))
    else:
        transformer = load_generator_transformer(
            transformer if transformer is not None else args.init_generator, tokenizer, num_classes
        )
        if args.add_layers:
            transformer = deepen_generator_transformer(transformer, args.add_layers)
    label_embeddings = _label_embeddings(transformer)
    builtin_dropout = [module.dropout_prob for module in label_embeddings]
    for module in label_embeddings:
        module.dropout_prob = 0.0

    noise_scheduler = args.training_noise_scheduler()
    stream = GeneratorTrainingStream(
        cache, tokenizer.config.grid_size, num_classes, args.max_steps, global_batch_size, noise_scheduler,
        args.label_dropout, args.seed,
    )
    callbacks = list(callbacks or [])
    ema = None
    if args.ema_decay is not None:
        ema = EMAModel(transformer.parameters(), decay=args.ema_decay)
        if resume_folder is not None:
            ema.load_state_dict(torch.load(os.path.join(resume_folder, EMA_STATE_NAME), weights_only=True))
        callbacks.append(_EMACallback(ema, list(transformer.parameters())))
    trainer = GeneratorTrainer(
        model=GeneratorFlowMatchingModel(transformer, noise_scheduler),
        args=args,
        train_dataset=stream,
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_folder)
    losses = trainer.step_losses()

    if ema is not None:
        ema.copy_to(transformer.parameters())
    for module, probability in zip(label_embeddings, builtin_dropout):
        module.dropout_prob = probability
    transformer.eval()
    pipeline = UniFlowClassConditionalPipeline(
        transformer=transformer,
        scheduler=UniFlowFlowMatchScheduler(solver=args.solver, euler_at_final=args.euler_at_final),
        tokenizer=tokenizer,
        id2label=id2label,
        latent_mean=cache.latent_mean,
        latent_std=cache.latent_std,
        **args.pipeline_settings(),
    )
    if save_pipeline and trainer.is_world_process_zero():
        pipeline.save_pretrained(args.output_dir)
    trainer.accelerator.wait_for_everyone()
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
    "GeneratorFlowMatchingModel",
    "GeneratorTrainer",
    "GeneratorTrainingArguments",
    "GeneratorTrainingOutput",
    "GeneratorTrainingStream",
    "LatentCache",
    "attach_guide",
    "build_generator_transformer",
    "build_latent_cache",
    "dataset_id2label",
    "deepen_generator_transformer",
    "encode_dataset",
    "latent_cache_fingerprint",
    "latent_statistics",
    "load_generator_transformer",
    "tokenizer_fingerprint",
    "train_generator",
]
