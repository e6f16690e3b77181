# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Training UniFlow tokenizers with the Hugging Face `Trainer`: datasets, `UniFlowTrainer`, `train_tokenizer`, LoRA."""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from accelerate.utils import parse_flag_from_env
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.utils import logging

from .io import last_complete_checkpoint
from .modeling import UniFlowConfig, UniFlowImageProcessor, UniFlowModel
from .modeling.loss_uniflow import process_rank_and_world_size


logger = logging.get_logger(__name__)

LORA_TARGETS = ("encoder", "decoder", "both")
FLOW_LOSS_STREAM = 1  # the last key of a sample's flow-loss draws (its augmentation's keys end at the sample index)


def sample_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from `seed` and `keys` (e.g. epoch, sample index) through NumPy's `SeedSequence`."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def flow_loss_generators(draw_keys: torch.Tensor) -> list[torch.Generator]:
    """One generator per image for its flow loss's noise and times, from its `draw_key` (seed, epoch, index)."""
    return [sample_generator(*key, FLOW_LOSS_STREAM) for key in draw_keys.tolist()]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


class UniFlowImageTransform:
    """One image -> normalised `pixel_values` (3, H, W); with `augment`, first torchvision's `RandomResizedCrop` to the
    processor's `crop_size` (bicubic) and a random horizontal flip, drawn from the `generator` passed per call."""

    crop_scale = (0.8, 1.0)
    crop_ratio = (3 / 4, 4 / 3)
    flip_probability = 0.5

    def __init__(self, processor: UniFlowImageProcessor, augment: bool = True):
        if augment and not processor.do_center_crop:
            raise ValueError("Augmentation crops to the processor's `crop_size`: use one with `do_center_crop=True`.")
        self.processor = processor
        self.augment = augment

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.augment:
            return self.processor(image, return_tensors="pt").pixel_values[0]
        rgb = self.processor(image, do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
        rgb = Image.fromarray(rgb.pixel_values[0].astype(np.uint8).transpose(1, 2, 0))  # any accepted input -> RGB
        size = self.processor.crop_size
        box = self.random_crop_box(*rgb.size, generator)
        crop = rgb.resize((size["width"], size["height"]), Image.BICUBIC, box=box)
        if _uniform(generator, 0.0, 1.0) < self.flip_probability:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        return self.processor(crop, do_resize=False, return_tensors="pt").pixel_values[0]

    def random_crop_box(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) as torchvision's `RandomResizedCrop.get_params`."""
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            target_area = width * height * _uniform(generator, *self.crop_scale)
            aspect_ratio = math.exp(_uniform(generator, *log_ratio))
            crop_width = int(round(math.sqrt(target_area * aspect_ratio)))
            crop_height = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(torch.randint(0, height - crop_height + 1, (), generator=generator))
                left = int(torch.randint(0, width - crop_width + 1, (), generator=generator))
                return left, top, left + crop_width, top + crop_height
        crop_width = min(width, int(round(height * self.crop_ratio[1])))  # the whole image, clamped to the ratios
        crop_height = min(height, int(round(width / self.crop_ratio[0])))
        left, top = (width - crop_width) // 2, (height - crop_height) // 2
        return left, top, left + crop_width, top + crop_height


class _UniFlowImages:
    """What both training datasets share: the checks, the transform and the example of a row with its `draw_key`."""

    streaming = False

    def __init__(
        self,
        dataset: Any,
        config: UniFlowConfig,
        processor: UniFlowImageProcessor | None = None,
        image_column: str = "image",
        augment: bool = True,
        seed: int = 0,
    ):
        import datasets

        if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            raise TypeError(f"Got a DatasetDict with splits {list(dataset)}; pass one split (e.g. dataset['train']).")
        if self.streaming and not isinstance(dataset, datasets.IterableDataset):
            raise TypeError(f"Expected a `datasets.IterableDataset` (`streaming=True`), got {type(dataset).__name__}.")
        map_style = hasattr(dataset, "__len__") and not isinstance(dataset, torch.utils.data.IterableDataset)
        if not self.streaming and not map_style:
            raise TypeError(
                f"Expected a map-style dataset (with __len__ and __getitem__), got {type(dataset).__name__}; for a "
                "stream (`datasets.IterableDataset`) wrap it with `UniFlowIterableTrainingDataset`."
            )
        columns = getattr(dataset, "column_names", None)
        if isinstance(columns, (list, tuple)) and image_column not in columns:
            raise ValueError(
                f"The dataset has no column {image_column!r}; its columns are {list(columns)}. Pass the column that "
                "holds the images as `image_column` (`--image-column` on the command line)."
            )
        self.dataset = dataset
        self.image_column = image_column
        processor = processor or UniFlowImageProcessor.from_image_size(config.image_size)
        self.transform = UniFlowImageTransform(processor, augment)
        size = self.transform.processor.crop_size
        if size["height"] % config.patch_size or size["width"] % config.patch_size:
            raise ValueError(
                f"The processor crops images to {size['height']}x{size['width']}, not a multiple of the model's patch "
                f"size {config.patch_size}; set its `crop_size` to a multiple (e.g. {config.image_size})."
            )
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _example(self, row: Any, key: int, where: str) -> dict[str, torch.Tensor]:
        if not isinstance(row, dict) or self.image_column not in row:
            found = list(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{where} of the dataset has no {self.image_column!r} column (it holds {found}).")
        try:
            pixel_values = self.transform(row[self.image_column], sample_generator(self.seed, self.epoch, key))
        except (ValueError, TypeError, OSError) as error:
            raise ValueError(f"{where}, column {self.image_column!r}: cannot use it as an image: {error}") from error
        return {"pixel_values": pixel_values, "draw_key": torch.tensor([self.seed, self.epoch, key])}


class UniFlowTrainingDataset(_UniFlowImages, torch.utils.data.Dataset):
    """Images for `UniFlowModel` training: item `i` is its `pixel_values` (3, H, W), augmented from
    `sample_generator(seed, epoch, i)`, and its `draw_key` (seed, epoch, i) for the flow loss's draws."""

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self._example(self.dataset[index], index, f"Row {index}")


class UniFlowIterableTrainingDataset(_UniFlowImages, torch.utils.data.IterableDataset):
    """`UniFlowTrainingDataset` for a `datasets.IterableDataset`, split between processes and data workers; a sample's
    key is its position in the stream as one process would number it. Each process must get as many batches."""

    streaming = True

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(self.epoch)

    def __iter__(self):
        from datasets.distributed import split_dataset_by_node

        rank, world_size = process_rank_and_world_size()
        stream = split_dataset_by_node(self.dataset, rank, world_size) if world_size > 1 else self.dataset
        worker = torch.utils.data.get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        for i, row in enumerate(stream):
            position = (i * num_workers + worker_id) * world_size + rank
            yield self._example(row, position, f"Sample {position} of the stream")


def loss_parts(outputs: Any) -> dict[str, torch.Tensor]:
    """The detached loss parts of a `UniFlowModelOutput` under their log names (`distill_w/layer_03`...)."""
    parts = {name: outputs[name].detach().float() for name in ("flow_loss", "distillation_loss") if name in outputs}
    for prefix, name in (("distill_w", "distillation_weights"), ("distill_cos", "distillation_cosine")):
        if name in outputs:
            width = max(2, len(str(len(outputs[name]))))
            for layer, value in enumerate(outputs[name].detach().float(), start=1):
                parts[f"{prefix}/layer_{layer:0{width}d}"] = value
    return parts


class _DatasetEpochCallback(TrainerCallback):
    """Tells the training dataset the epoch that starts (accelerate does not for the sampler of multi-process runs)."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(math.floor(state.epoch + 1e-6))  # the Trainer's epoch counter (resumes mid-epoch)


class UniFlowTrainer(Trainer):
    """A `Trainer` for `UniFlowModel` (or a PEFT model of one) that draws each image's flow loss from its `draw_key` and
    logs the loss parts (`loss_parts`), averaged over each logging interval and over processes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_names = ["draw_key"]  # the loss's labels: the Trainer keeps them in batches and evaluates the loss
        self._loss_parts = {True: {}, False: {}}  # training and evaluation: name -> values since the last log
        self.add_callback(_DatasetEpochCallback())
        if self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0:
            logger.warning("Persistent data workers miss the epoch change: each epoch repeats the first's draws.")

    def get_train_dataloader(self):
        """A stream splits itself between processes: accelerate neither splits it again nor feeds it from process 0."""
        if not isinstance(self.train_dataset, UniFlowIterableTrainingDataset):
            return super().get_train_dataloader()
        from accelerate.data_loader import prepare_data_loader

        loader = torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            drop_last=self.args.dataloader_drop_last,
        )
        return prepare_data_loader(
            loader, self.args.device, num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's losses, each image's flow loss drawn from its `draw_key` (from the global RNG without keys)."""
        inputs = dict(inputs)
        draw_keys = inputs.pop("draw_key", None)
        inputs.update(generator=flow_loss_generators(draw_keys) if draw_keys is not None else None, return_loss=True)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        for name, value in loss_parts(outputs).items():
            self._loss_parts[model.training].setdefault(name, []).append(value)
        return (loss, outputs) if return_outputs else loss

    def _pop_loss_parts(self, training: bool) -> dict[str, float]:
        """The means of the training or evaluation loss parts since the last call, over steps and processes."""
        parts = self._loss_parts[training]
        if not parts:
            return {}
        names = sorted(parts)
        means = torch.stack([torch.stack(parts[name]).mean() for name in names]).to(self.args.device)
        parts.clear()
        return dict(zip(names, self.accelerator.reduce(means, reduction="mean").tolist()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training logs: every process emits them at the same step
            logs.update(self._pop_loss_parts(training=True))
        super().log(logs, start_time)

    def evaluation_loop(self, *args, metric_key_prefix: str = "eval", **kwargs):
        self._loss_parts[False].clear()
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        for name, value in self._pop_loss_parts(training=False).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output


def _unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _stacked_linears(root: nn.Module, prefix: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Regexes for the `nn.Linear` modules in the numbered layers of `root`, any index (`layers\\.\\d+\\.mlp\\.fc1`)."""
    patterns = set()
    for name, module in root.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in exclude:
            escaped = re.escape(prefix + name)
            pattern = re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", escaped, count=1)
            if pattern != escaped:
                patterns.add(pattern)
    return sorted(patterns)


def lora_target_modules(model: UniFlowModel, targets: str = "both") -> str:
    """A PEFT `target_modules` regex for LoRA on a `UniFlowModel`: `"encoder"`, the linear layers inside the encoder's
    layers; `"decoder"`, those of the global blocks and flow-head blocks (not their adaLN modulations); or `"both"`.
    The distillation teacher is never targeted."""
    if targets not in LORA_TARGETS:
        raise ValueError(f"`targets` must be one of {LORA_TARGETS}, got {targets!r}.")
    model = _unwrap(model)
    patterns = []
    if targets in ("encoder", "both"):
        patterns += _stacked_linears(model.vision_model, "vision_model.")
        if not patterns:
            raise ValueError(f"Found no linear layers to adapt in the encoder {type(model.vision_model).__name__}.")
    if targets in ("decoder", "both"):
        patterns += _stacked_linears(model.global_blocks, "global_blocks.")
        patterns += _stacked_linears(model.flow_head, "flow_head.", exclude=("modulation",))
    return "|".join(patterns)


def lora_config_for(model: UniFlowModel, targets: str = "both", r: int = 8, lora_alpha: int | None = None, **kwargs):
    """A `peft.LoraConfig` of rank `r` (`lora_alpha` = 2r by default) on `lora_target_modules(model, targets)`."""
    from peft import LoraConfig

    alpha = 2 * r if lora_alpha is None else lora_alpha
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=lora_target_modules(model, targets), **kwargs)


def apply_lora(model: UniFlowModel, targets: str = "both", r: int = 8, lora_alpha: int | None = None, **lora_kwargs):
    """`model` wrapped with PEFT LoRA adapters (`lora_config_for`). Enable the distillation teacher first, so that
    it stays adapter-free, or pass the config to `train_tokenizer(..., lora_config=...)`, which orders both."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config_for(model, targets, r, lora_alpha, **lora_kwargs))


def cpu_processes_need_use_cpu() -> bool:
    """Whether a launcher started several processes without an accelerator: they need `use_cpu` to shard the data."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def check_cpu_launch(deepspeed: Any = None) -> None:
    """Refuse, before any work, the launches that cannot shard on a machine without an accelerator: DeepSpeed, and
    `accelerate launch --cpu --num_processes N` (it starts one process; several CPU processes only through MPI)."""
    if torch.accelerator.is_available():
        return
    if deepspeed or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        raise ValueError(
            "DeepSpeed (--deepspeed, or an accelerate DeepSpeed config) runs on GPUs; this machine has none and "
            "DeepSpeed cannot run. Launch without it: `torchrun --nproc_per_node N` trains on N CPU processes."
        )
    if cpu_processes_need_use_cpu() and parse_flag_from_env("ACCELERATE_USE_FSDP"):
        logger.warning_once("Accelerate runs FSDP on accelerators only: these CPU processes train with DDP.")
    single_cpu_process = parse_flag_from_env("ACCELERATE_USE_CPU") and "MASTER_ADDR" in os.environ
    if single_cpu_process and "WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ:
        raise ValueError(
            "`accelerate launch --cpu --num_processes N` started this single process (several CPU processes only "
            "through MPI). Launch `torchrun --nproc_per_node N ...` or `accelerate launch --multi_gpu --num_processes "
            "N ...` (no --cpu: without GPUs they train on the CPU, sharded), or drop --num_processes for one process."
        )


def check_training_numbers(args: TrainingArguments) -> None:
    """Refuse nonsense step and batch numbers before any work (the Trainer takes a negative `max_steps` as epochs)."""
    if not (args.max_steps == -1 or args.max_steps > 0):
        raise ValueError(
            f"--max-steps must be a positive number of steps, or -1 to train --num-train-epochs; got {args.max_steps}."
        )
    if args.max_steps == -1 and not args.num_train_epochs > 0:
        raise ValueError(f"--num-train-epochs must be > 0 (or pass --max-steps), got {args.num_train_epochs}.")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    for name in ("logging_steps", "save_steps", "eval_steps"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0 (steps, or a share of the run), got {value}.")


def prepare_training_arguments(training_args: TrainingArguments) -> TrainingArguments:
    """What every training entry point runs first: `check_training_numbers` and `check_cpu_launch`, then the processes
    of a CPU launch get `use_cpu` (in place) so that they shard."""
    check_training_numbers(training_args)
    check_cpu_launch(getattr(training_args, "deepspeed", None))
    if not cpu_processes_need_use_cpu() or training_args.use_cpu or training_args.world_size > 1:
        return training_args
    logger.info("Several processes and no accelerator: training on the CPU, sharded (use_cpu).")
    training_args.use_cpu = True
    training_args.dataloader_pin_memory = False
    training_args.ddp_backend = training_args.ddp_backend or "gloo"
    training_args.__dict__.pop("_setup_devices", None)  # the cached device set-up, redone with use_cpu
    _ = training_args.device
    return training_args


def train_tokenizer(
    model: UniFlowModel,
    train_dataset: Any,
    training_args: TrainingArguments,
    image_column: str = "image",
    processor: UniFlowImageProcessor | None = None,
    eval_dataset: Any = None,
    distillation: bool = True,
    lora_config=None,
    augment: bool = True,
    resume_from_checkpoint: str | bool | None = None,
    callbacks: list | None = None,
    save_model: bool = True,
) -> UniFlowTrainer:
    """Train a UniFlow tokenizer (flow loss + layer-wise adaptive self-distillation) with `UniFlowTrainer`; returns it.

    The model's current encoder becomes the frozen teacher unless `distillation=False`, `distillation_mode == "none"`
    or `freeze_encoder`. Draws are seeded by `data_seed` (else `seed`); `resume_from_checkpoint=True`: the last one."""
    base_model = _unwrap(model)
    if not isinstance(base_model, UniFlowModel):
        raise TypeError(f"`model` must be a UniFlowModel (or a PEFT model of one), got {type(model).__name__}.")
    has_adapters = base_model is not model
    if has_adapters and lora_config is not None:
        raise ValueError("`model` already has adapters: pass either a PEFT model or `lora_config`, not both.")
    prepare_training_arguments(training_args)
    half = training_args.bf16 or training_args.fp16 or getattr(training_args, "mixed_precision", "") in ("bf16", "fp16")
    if half and training_args.device.type == "cpu":  # --bf16/--fp16, or the accelerate config's mixed_precision
        raise ValueError(
            "bf16/fp16 mixed precision is not supported for UniFlow training on CPU: train in float32 (drop "
            "--bf16/--fp16 or the accelerate config's mixed_precision), or train on a GPU."
        )
    config = base_model.config
    processor = processor if processor is not None else UniFlowImageProcessor.from_image_size(config.image_size)

    if config.freeze_encoder:
        base_model.vision_model.requires_grad_(False)
    if distillation and config.distillation_mode != "none" and not config.freeze_encoder:
        if base_model.distillation_teacher is None:
            if has_adapters:
                raise ValueError(
                    "Enable the distillation teacher before adding adapters (`model.enable_distillation()`, then "
                    "`apply_lora`), or pass `lora_config` here: a teacher copied now would carry the adapters."
                )
            base_model.enable_distillation()
    else:
        base_model.disable_distillation()
    if lora_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config)

    import datasets

    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    streaming = isinstance(train_dataset, datasets.IterableDataset)
    train_class = UniFlowIterableTrainingDataset if streaming else UniFlowTrainingDataset
    if eval_dataset is not None:
        eval_dataset = UniFlowTrainingDataset(eval_dataset, config, processor, image_column, augment=False, seed=seed)
    trainer = UniFlowTrainer(
        model=model,
        args=training_args,
        train_dataset=train_class(train_dataset, config, processor, image_column, augment=augment, seed=seed),
        eval_dataset=eval_dataset,
        data_collator=default_data_collator,
        processing_class=processor,
        callbacks=callbacks,
    )
    if resume_from_checkpoint is None:
        resume_from_checkpoint = training_args.resume_from_checkpoint
    if resume_from_checkpoint is True:
        resume_from_checkpoint = last_complete_checkpoint(training_args.output_dir)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if save_model:
        save_final_model(trainer)
    return trainer


def save_final_model(trainer) -> None:
    """`trainer.save_model()` with whole weights: under FSDP the final save gathers a full state dict (DeepSpeed
    ZeRO-3 gathers in `save_model` itself), so that the folder loads with plain `from_pretrained`."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model()

