# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Train a class-conditional latent generator (diffusers' `DiTTransformer2DModel`) with the `Trainer` on a frozen
UniFlow tokenizer's latents, cached by `Dataset.map`; the result is a `UniFlowClassConditionalPipeline`. The training
draws (noise, flow time, label dropout) are made in `GeneratorTrainer.compute_loss`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from diffusers.training_utils import EMAModel
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .data import check_images
from .hardware import cpu_bf16_support
from .io import check_output_dir, last_complete_checkpoint
from .modeling import UniFlowModel
from .modeling.configuration_uniflow import FLOW_TIMESTEP_DISTRIBUTIONS
from .pipelines import UniFlowClassConditionalPipeline, UniFlowFlowMatchScheduler
from .pipelines.pipeline_uniflow_class_conditional import check_sampling_setting
from .pipelines.pipeline_uniflow_utils import default_image_processor
from .training import prepare_training_arguments, sample_generator


EMA_STATE_NAME = "ema.pt"
PIPELINE_SETTINGS = ("decoder_num_inference_steps", "guidance_scale", "guidance_interval", "guidance_rescale")


def _option(default, help: str, **metadata):
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class GeneratorTrainingArguments(TrainingArguments):
    """`TrainingArguments` of `train_generator` (`uniflow-hf train-generator`) with the generator's defaults, and the
    options of the data, the DiT and the saved pipeline; every setting is checked here."""

    learning_rate: float = _option(3e-4, "AdamW learning rate")
    per_device_train_batch_size: int = _option(64, "samples per process and micro-batch")
    lr_scheduler_type: str = _option("constant", "learning-rate schedule, e.g. cosine")
    global_batch_size: int | None = _option(None, "samples per step over all processes (sets the per-device batch)")
    image_column: str = _option("image", "the dataset column holding the images")
    label_column: str = _option("label", "the dataset column holding the class labels")
    latent_cache_dir: str | None = _option(None, "the latents' folder (default OUTPUT_DIR/latent_cache)")
    encode_batch_size: int = _option(64, "images per batch when encoding the latents")
    label_dropout: float = _option(0.1, "probability of training a sample as the null class")
    ema_decay: float | None = _option(None, "save an EMA of the weights (e.g. 0.999)")
    transformer_kwargs: dict | str | None = _option(None, 'size of a new DiT as JSON, e.g. \'{"num_layers": 4}\'')
    init_generator: str | None = _option(None, "continue training the DiT of this pipeline (or transformer) folder")
    timestep_distribution: str | None = _option(None, "training flow times", choices=list(FLOW_TIMESTEP_DISTRIBUTIONS))
    timestep_logit_mean: float | None = _option(None, "logit-normal mean (default 0)")
    timestep_logit_std: float | None = _option(None, "its standard deviation (default 1)")
    timestep_uniform_fraction: float | None = _option(None, "share of uniform times in fat_lognormal (default 0.1)")
    solver: str = _option("euler", "the pipeline's solver", choices=["euler", "heun"])
    euler_at_final: bool = _option(False, "with heun: end with a plain Euler step")
    decoder_num_inference_steps: int | None = _option(None, "the pipeline's decoder steps", aliases=["--decoder-steps"])
    guidance_scale: float | None = _option(None, "the pipeline's guidance scale (1.5)")
    guidance_interval: list[float] | None = _option(None, "the pipeline's guidance interval T_START T_END in flow time")
    guidance_rescale: float | None = _option(None, "the pipeline's guidance rescale")

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.transformer_kwargs, str):
            try:
                self.transformer_kwargs = json.loads(self.transformer_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(f"`transformer_kwargs` is not valid JSON: {error}") from error
        if self.transformer_kwargs is not None and not isinstance(self.transformer_kwargs, dict):
            raise ValueError(f"`transformer_kwargs` must be a JSON object, got {self.transformer_kwargs!r}.")
        if self.init_generator is not None and self.transformer_kwargs:
            raise ValueError("`transformer_kwargs` size a new DiT; with `init_generator` the size is that DiT's.")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"`label_dropout` must be in [0, 1), got {self.label_dropout}.")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in (0, 1) (e.g. 0.999) or None, got {self.ema_decay}.")
        for name in ("global_batch_size", "encode_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.warmup_steps and self.lr_scheduler_type == "constant":
            raise ValueError("`lr_scheduler_type='constant'` has no warm-up: use 'constant_with_warmup'.")
        if self.max_steps > 0 and self.warmup_steps >= max(1, self.max_steps):  # below 1 it is a share of the steps
            raise ValueError(
                f"`warmup_steps` ({self.warmup_steps:g}) must be below the number of steps ({self.max_steps})."
            )
        if self.device.type == "cpu" and self.fp16:
            raise ValueError("fp16 mixed precision needs a GPU: drop --fp16, or use --bf16 on a CPU with bfloat16.")
        fast_bf16, why = cpu_bf16_support() if self.device.type == "cpu" and self.bf16 else (True, "")
        if not fast_bf16:
            raise ValueError(f"This CPU has no bfloat16 arithmetic, so --bf16 would run emulated ({why}): drop --bf16.")
        self.noise_scheduler()
        for name in PIPELINE_SETTINGS:
            check_sampling_setting(name, getattr(self, name))

    def noise_scheduler(self) -> UniFlowFlowMatchScheduler:
        """The scheduler that draws the training flow times and noises the latents, saved as the pipeline's sampler."""
        settings = {k: v for k, v in vars(self).items() if k.startswith("timestep_") and v is not None}
        return UniFlowFlowMatchScheduler(solver=self.solver, euler_at_final=self.euler_at_final, **settings)


@dataclass
class GeneratorTrainingOutput:
    """The trained `pipeline` (with its tokenizer, ready to sample) and the loss of every step (`losses`)."""

    pipeline: UniFlowClassConditionalPipeline
    losses: list[float] = field(default_factory=list)


def build_generator_transformer(
    tokenizer: UniFlowModel, num_classes: int, source: DiTTransformer2DModel | str | os.PathLike | None = None, **size
) -> DiTTransformer2DModel:
    """The DiT over `tokenizer`'s latent grid that predicts the velocity (class id `num_classes` is the null class):
    `source` (a DiT, or its pipeline or transformer folder) to continue training, else a new one of the default size
    (6 layers, 4 heads of 32, patches of 2 on grids of 8 and more) updated with `size`."""
    channels, grid_size = tokenizer.config.latent_channels, tokenizer.config.grid_size
    fixed = dict(in_channels=channels, out_channels=channels, sample_size=grid_size, num_embeds_ada_norm=num_classes)
    if isinstance(source, (str, os.PathLike)):
        subfolder = os.path.join(source, "transformer")
        folder = subfolder if os.path.isfile(os.path.join(subfolder, "config.json")) else os.fspath(source)
        config_file = os.path.join(folder, "config.json")
        config = DiTTransformer2DModel.load_config(config_file) if os.path.isfile(config_file) else {}
        if config.get("_class_name") != "DiTTransformer2DModel":
            raise ValueError(f"{folder} holds no DiT: pass a pipeline folder or a transformer folder.")
        source = DiTTransformer2DModel.from_pretrained(folder)
    if source is not None:
        found = {key: source.config[key] for key in fixed}
        if found != fixed:
            raise ValueError(f"The generator to continue has {found}; this tokenizer and dataset need {fixed}.")
        return source
    if fixed.keys() & size.keys():
        raise ValueError(f"{sorted(fixed.keys() & size.keys())} follow from the tokenizer and the dataset.")
    patch_size = 2 if grid_size >= 8 and grid_size % 2 == 0 else 1
    size = dict(num_layers=6, num_attention_heads=4, attention_head_dim=32, patch_size=patch_size) | size
    if grid_size % size["patch_size"]:
        raise ValueError(f"patch_size {size['patch_size']} does not divide the latent grid size {grid_size}.")
    return DiTTransformer2DModel(**fixed, **size)


def dataset_id2label(dataset, label_column: str) -> dict[int, str]:
    """Class names from a `ClassLabel` column, or the ids themselves as names for an integer column."""
    from datasets import ClassLabel

    if label_column not in dataset.column_names:
        raise ValueError(f"No label column {label_column!r} in the dataset; its columns: {dataset.column_names}.")
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return dict(enumerate(feature.names))
    labels = list(dataset[label_column])
    if not all(isinstance(label, int) and not isinstance(label, bool) and label >= 0 for label in labels):
        raise ValueError(f"The label column {label_column!r} must be a ClassLabel or hold non-negative int ids.")
    return {class_id: str(class_id) for class_id in range(max(labels) + 1)}


def latent_statistics(latents) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of latents (..., latent_channels): a tensor or an iterable of them."""
    count, total, total_of_squares = 0, 0.0, 0.0
    for batch in [latents] if isinstance(latents, torch.Tensor) else latents:
        flat = batch.reshape(-1, batch.shape[-1]).double()
        count, total, total_of_squares = count + len(flat), total + flat.sum(0), total_of_squares + flat.square().sum(0)
    mean = total / count
    variance = (total_of_squares - count * mean.square()) / max(count - 1, 1)
    return mean.tolist(), variance.clamp_min(0).sqrt().clamp_min(1e-6).tolist()


def build_latent_cache(tokenizer: UniFlowModel, dataset, args: GeneratorTrainingArguments):
    """`dataset`'s `latents` (tokens, channels) and `label`s, encoded by `dataset.map` into
    `args.latent_cache_dir/latents-FINGERPRINT.arrow` (a hash of the tokenizer, the dataset and the columns), which
    later runs reuse. The main process encodes while the others wait: the folder must be shared by the processes."""
    from accelerate import PartialState
    from datasets import Array2D, Features, Value
    from datasets.fingerprint import Hasher

    if args.image_column not in dataset.column_names:
        raise ValueError(f"No image column {args.image_column!r} in the dataset; its columns: {dataset.column_names}.")
    processor = default_image_processor(tokenizer)
    bookkeeping = ("architectures", "auto_map", "dtype", "torch_dtype", "transformers_version")
    config = {k: v for k, v in tokenizer.config.to_dict().items() if not k.startswith("_") and k not in bookkeeping}
    weights = sorted((k, v) for k, v in tokenizer.state_dict().items() if not k.startswith("distillation_teacher."))
    hasher = Hasher()
    for value in (config, processor.to_dict(), dataset._fingerprint, args.image_column, args.label_column, *weights):
        hasher.update(value)
    cache_dir = args.latent_cache_dir or os.path.join(args.output_dir, "latent_cache")
    cache_dir = check_output_dir(cache_dir, "latent_cache_dir")
    cache_file = os.path.join(cache_dir, f"latents-{hasher.hexdigest()}.arrow")
    if not os.path.isfile(cache_file):  # every process checks, before any of them waits for another
        check_images(dataset, args.image_column)
    shape = (tokenizer.config.grid_size**2, tokenizer.config.latent_channels)

    def encode(images, labels):
        pixel_values = processor(images, return_tensors="pt").pixel_values.to(tokenizer.device, tokenizer.dtype)
        with torch.no_grad():
            return {"latents": tokenizer.encode(pixel_values).float().cpu().numpy(), "label": labels}

    with PartialState().main_process_first():
        os.makedirs(cache_dir, exist_ok=True)
        latents = dataset.map(
            encode, batched=True, batch_size=args.encode_batch_size, desc="Encoding images",
            input_columns=[args.image_column, args.label_column], remove_columns=dataset.column_names,
            features=Features({"latents": Array2D(shape, "float32"), "label": Value("int64")}),
            cache_file_name=cache_file, load_from_cache_file=True, new_fingerprint=hasher.hexdigest(),
        )
    return latents.with_format("torch")


def training_dataset(latents, global_batch_size: int, seed: int):
    """The cached `latents` as the `Trainer` samples them: `latents`, `class_labels` and `index` (the row, which keys
    the sample's draws), padded with images repeated (chosen by `seed`) to whole global batches, as torch's
    `DistributedSampler` pads, so that every epoch splits evenly over the processes and accumulation steps."""
    from datasets import concatenate_datasets

    latents = latents.with_format(None).rename_column("label", "class_labels")
    num_images, padding = len(latents), -len(latents) % global_batch_size
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    repeated = order.repeat(padding // num_images + 1)[:padding].tolist()
    extra = latents.select(repeated, keep_in_memory=True).flatten_indices(keep_in_memory=True)
    latents = concatenate_datasets([latents, extra]).add_column("index", range(num_images + padding))
    return latents.with_format("torch")


class GeneratorTrainer(Trainer):
    """A `Trainer` of the DiT whose loss is the mean squared error of its velocity at the noised, normalised latents;
    it keeps the loss of every micro-batch for `step_losses`."""

    def __init__(self, *args, noise_scheduler, latent_mean, latent_std, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise_scheduler = noise_scheduler
        self.latent_mean, self.latent_std = (torch.tensor(x).reshape(1, -1, 1, 1) for x in (latent_mean, latent_std))
        self._micro_batch_losses: list[torch.Tensor] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Each sample's noise, flow time and label dropout come from `sample_generator(seed, step, index)`: the same
        whatever the number of processes and accumulation steps, and again when a run resumes."""
        config, label_dropout = self.model.config, self.args.label_dropout
        noise, timesteps, class_labels = [], [], []
        for index, label in zip(inputs["index"].tolist(), inputs["class_labels"].tolist()):
            generator = sample_generator(self.args.seed, self.state.global_step, index)
            noise.append(torch.randn(config.in_channels, config.sample_size, config.sample_size, generator=generator))
            timesteps.append(self.noise_scheduler.sample_training_timesteps(1, generator=generator))
            dropped = torch.rand((), generator=generator).item() < label_dropout
            class_labels.append(config.num_embeds_ada_norm if dropped else label)
        device, size = inputs["latents"].device, config.sample_size
        latents = inputs["latents"].transpose(1, 2).unflatten(2, (size, size))
        latents = (latents - self.latent_mean.to(device)) / self.latent_std.to(device)
        noise, timesteps = torch.stack(noise).to(device), torch.cat(timesteps).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        class_labels = torch.tensor(class_labels, device=device)
        velocity = model(noisy, timestep=timesteps, class_labels=class_labels, return_dict=False)[0]
        loss = F.mse_loss(velocity.float(), self.noise_scheduler.get_velocity(latents, noise).float())
        if model.training:
            self._micro_batch_losses.append(loss.detach().float())
        return (loss, {"loss": loss}) if return_outputs else loss

    def step_losses(self) -> list[float]:
        """The loss of every optimisation step this trainer ran, averaged over its micro-batches and processes."""
        if not self._micro_batch_losses:
            return []
        losses = torch.stack(self._micro_batch_losses).reshape(-1, self.args.gradient_accumulation_steps).mean(1)
        return self.accelerator.reduce(losses.to(self.args.device), reduction="mean").cpu().tolist()


class _EMACallback(TrainerCallback):
    """An `EMAModel` of `parameters`: stepped after each step, saved in each checkpoint, copied into them at the end."""

    def __init__(self, parameters, decay: float, resume_folder: str | None):
        self.parameters = list(parameters)
        self.ema = EMAModel(self.parameters, decay=decay)
        if resume_folder is not None:
            self.ema.load_state_dict(torch.load(os.path.join(resume_folder, EMA_STATE_NAME), weights_only=True))

    def on_step_end(self, args, state, control, **kwargs):
        self.ema.step(self.parameters)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            torch.save(self.ema.state_dict(), os.path.join(folder, EMA_STATE_NAME))

    def on_train_end(self, args, state, control, **kwargs):
        self.ema.copy_to(self.parameters)


def train_generator(
    tokenizer: UniFlowModel | str | os.PathLike, dataset, args: GeneratorTrainingArguments,
    transformer: DiTTransformer2DModel | None = None, resume_from_checkpoint: str | bool | None = None,
    callbacks: list[TrainerCallback] | None = None, save_pipeline: bool = True,
) -> GeneratorTrainingOutput:
    """Train a DiT (`transformer`, in place, else `args.init_generator`'s, else a new one) to generate `tokenizer`
    latents of the classes of `dataset` (a `ClassLabel` column, whose names become `id2label`, or non-negative ints);
    return (and save to `args.output_dir`) the pipeline. N processes at per-device batch B train as 1 at batch N·B;
    `resume_from_checkpoint` (a folder, or `True` for the last complete one) continues on the same losses."""
    if not isinstance(args, GeneratorTrainingArguments):
        raise TypeError(f"`args` must be GeneratorTrainingArguments, got {type(args).__name__}.")
    if transformer is not None and (args.init_generator or args.transformer_kwargs):
        raise ValueError("Pass the DiT as `transformer` or as `init_generator`/`transformer_kwargs`, not both.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty.")
    prepare_training_arguments(args)
    processes_and_steps = args.world_size * args.gradient_accumulation_steps
    if args.global_batch_size is not None:
        per_device, remainder = divmod(args.global_batch_size, processes_and_steps)
        if remainder:
            raise ValueError(
                f"`global_batch_size` {args.global_batch_size} does not divide into {args.world_size} process(es) x "
                f"{args.gradient_accumulation_steps} accumulation step(s): launch processes x steps that divide it."
            )
        if args.per_device_train_batch_size not in (GeneratorTrainingArguments.per_device_train_batch_size, per_device):
            raise ValueError(
                f"`per_device_train_batch_size` {args.per_device_train_batch_size} disagrees with `global_batch_size` "
                f"{args.global_batch_size} ({per_device} over this launch): pass only one of them."
            )
        args.per_device_train_batch_size = per_device
    resume_folder = args.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint
    if resume_folder is True:
        required = (EMA_STATE_NAME,) if args.ema_decay is not None else ()
        resume_folder = last_complete_checkpoint(args.output_dir, required_files=required)
    resume_folder = os.fspath(resume_folder) if resume_folder else None

    if not isinstance(tokenizer, UniFlowModel):
        tokenizer = UniFlowModel.from_pretrained(tokenizer)
    tokenizer.eval().requires_grad_(False).to(args.device)
    id2label = dataset_id2label(dataset, args.label_column)
    latents = build_latent_cache(tokenizer, dataset, args)
    latent_mean, latent_std = latent_statistics(batch["latents"] for batch in latents.iter(args.encode_batch_size))

    set_seed(args.seed)  # the same new DiT in every process
    source = transformer if transformer is not None else args.init_generator
    transformer = build_generator_transformer(tokenizer, len(id2label), source, **(args.transformer_kwargs or {}))
    label_embeddings = [module for module in transformer.modules() if isinstance(module, LabelEmbedding)]
    for module in label_embeddings:
        module.dropout_prob = 0.0  # the DiT's own label dropout: `compute_loss` drops the labels instead
    callbacks = list(callbacks or [])
    if args.ema_decay is not None:
        callbacks.append(_EMACallback(transformer.parameters(), args.ema_decay, resume_folder))
    args.remove_unused_columns = False  # `index` keys the draws of `compute_loss`
    scheduler = args.noise_scheduler()
    trainer = GeneratorTrainer(
        model=transformer, args=args, data_collator=default_data_collator, callbacks=callbacks,
        train_dataset=training_dataset(latents, processes_and_steps * args.per_device_train_batch_size, args.seed),
        noise_scheduler=scheduler, latent_mean=latent_mean, latent_std=latent_std,
    )
    trainer.train(resume_from_checkpoint=resume_folder)

    for module in label_embeddings:
        module.dropout_prob = args.label_dropout  # for whoever trains the saved DiT next
    pipeline = UniFlowClassConditionalPipeline(
        transformer=transformer.eval(), scheduler=scheduler, tokenizer=tokenizer, id2label=id2label,
        latent_mean=latent_mean, latent_std=latent_std, **{name: getattr(args, name) for name in PIPELINE_SETTINGS},
    )
    if save_pipeline and trainer.is_world_process_zero():
        pipeline.save_pretrained(args.output_dir)
    trainer.accelerator.wait_for_everyone()
    return GeneratorTrainingOutput(pipeline=pipeline, losses=trainer.step_losses())


def attach_guide(
    pipeline: UniFlowClassConditionalPipeline, guide: UniFlowClassConditionalPipeline, autoguidance_scale: float,
    autoguidance_interval: tuple[float, float] | None = None,
) -> UniFlowClassConditionalPipeline:
    """`pipeline` with the DiT of `guide` (trained on the same classes and latents, e.g. a smaller DiT) as its
    `guide_transformer` and the given autoguidance as its default."""
    for key in ("id2label", "latent_mean", "latent_std"):
        ours, theirs = pipeline.config[key], guide.config[key]
        statistics = isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs)
        if not (ours == theirs or statistics and torch.allclose(torch.tensor(ours), torch.tensor(theirs), 1e-5, 1e-6)):
            raise ValueError(
                f"The guide was not trained on this pipeline's latents: its `{key}` is {theirs}, the pipeline's "
                f"{ours}. Train it with `train_generator` on the same tokenizer and dataset."
            )
    components = {**pipeline.components, "guide_transformer": guide.transformer}
    autoguidance = dict(autoguidance_scale=autoguidance_scale, autoguidance_interval=autoguidance_interval)
    return UniFlowClassConditionalPipeline(**components, **(pipeline.settings | autoguidance))
