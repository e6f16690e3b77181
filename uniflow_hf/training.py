# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Training UniFlow tokenizers with the Hugging Face `Trainer`.

- `UniFlowTrainingDataset` turns an image dataset (a `datasets.Dataset` with a PIL image column, or any map-style
  dataset of dicts) into `pixel_values` with `UniFlowImageProcessor` and light augmentation
  (`UniFlowImageTransform`: random resized crop of scale (0.8, 1), random horizontal flip), plus the flow's `noise`
  and `timesteps`. All its randomness comes from a generator seeded by (seed, epoch, sample index): a run gives the
  same batches on any number of processes, with any number of data workers, and after a resume.
  `UniFlowIterableTrainingDataset` does the same for streams (`datasets.IterableDataset`), split between processes.
- `UniFlowTrainer` is a `Trainer` that logs the loss parts: `flow_loss`, `distillation_loss` and, per encoder layer,
  the distillation weight `distill_w/layer_03` and student-teacher cosine `distill_cos/layer_03` (running means over
  the logging interval, averaged over processes); its evaluation reports the same parts (`eval_flow_loss`...).
- `train_tokenizer` wires both together: teacher for the self-distillation, frozen encoder, LoRA, resume.
- `apply_lora` / `lora_target_modules`: PEFT LoRA on the encoder and/or the decoder of a `UniFlowModel`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.utils import logging

from .io import last_complete_checkpoint
from .modeling import UniFlowConfig, UniFlowImageProcessor, UniFlowModel
from .modeling.flow_matching import draw_flow_training_inputs
from .modeling.loss_uniflow import process_rank_and_world_size, reduce_across_processes


logger = logging.get_logger(__name__)

LORA_TARGETS = ("encoder", "decoder", "both")


# ------------------------------------------------------------------------------------------------------- data
def sample_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from `seed` and `keys` (e.g. epoch, sample index) through NumPy's `SeedSequence`, so
    neighbouring keys give unrelated streams."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


class UniFlowImageTransform:
    """One image -> normalised `pixel_values` (3, H, W) with `processor`; with `augment`, first a random resized crop
    (area fraction in `crop_scale`, aspect ratio in `crop_ratio`, as torchvision's `RandomResizedCrop`) resized
    straight to the processor's `crop_size` with bicubic resampling, and a horizontal flip with probability
    `flip_probability`. Pure PIL / NumPy / torch; the random draws come from the `generator` passed per call.

    Inputs are whatever `processor` accepts (PIL images of any mode, NumPy arrays, torch tensors); anything else
    raises the processor's error."""

    def __init__(
        self,
        processor: UniFlowImageProcessor,
        augment: bool = True,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_probability: float = 0.5,
    ):
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"`crop_scale` must satisfy 0 < low <= high <= 1, got {crop_scale}.")
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"`crop_ratio` must satisfy 0 < low <= high, got {crop_ratio}.")
        if not 0 <= flip_probability <= 1:
            raise ValueError(f"`flip_probability` must be in [0, 1], got {flip_probability}.")
        if augment and not processor.do_center_crop:
            raise ValueError("Augmentation crops to the processor's `crop_size`: use a processor with `do_center_crop=True`.")
        self.processor = processor
        self.augment = augment
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.flip_probability = flip_probability

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the images it returns."""
        crop_size = self.processor.crop_size
        return crop_size["height"], crop_size["width"]

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """`generator`: the source of the random draws (torch's global one when None)."""
        if not self.augment:
            return self.processor(image, return_tensors="pt").pixel_values[0]
        rgb = self.processor(image, do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
        rgb = Image.fromarray(rgb.pixel_values[0].astype(np.uint8).transpose(1, 2, 0))  # any accepted input -> RGB
        height, width = self.output_size
        box = self.random_crop_box(rgb.width, rgb.height, generator)
        crop = rgb.resize((width, height), resample=Image.BICUBIC, box=box)
        if _uniform(generator, 0.0, 1.0) < self.flip_probability:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        return self.processor(crop, do_resize=False, return_tensors="pt").pixel_values[0]

    def random_crop_box(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a random crop, as torchvision's `RandomResizedCrop.get_params`: 10 tries at
        a random area and aspect ratio, then the largest central crop of an allowed aspect ratio."""
        area = width * height
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            target_area = area * _uniform(generator, *self.crop_scale)
            aspect_ratio = math.exp(_uniform(generator, *log_ratio))
            crop_width = int(round(math.sqrt(target_area * aspect_ratio)))
            crop_height = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(torch.randint(0, height - crop_height + 1, (), generator=generator))
                left = int(torch.randint(0, width - crop_width + 1, (), generator=generator))
                return left, top, left + crop_width, top + crop_height
        in_ratio = width / height
        if in_ratio < self.crop_ratio[0]:
            crop_width, crop_height = width, int(round(width / self.crop_ratio[0]))
        elif in_ratio > self.crop_ratio[1]:
            crop_width, crop_height = int(round(height * self.crop_ratio[1])), height
        else:
            crop_width, crop_height = width, height
        left, top = (width - crop_width) // 2, (height - crop_height) // 2
        return left, top, left + crop_width, top + crop_height


class _UniFlowSampleDraws:
    """What both training datasets share: the image column, the transform, and the example of a row whose random
    draws come from `sample_generator(seed, epoch, key)`."""

    def __init__(
        self,
        dataset: Any,
        config: UniFlowConfig,
        processor: UniFlowImageProcessor | None = None,
        image_column: str = "image",
        augment: bool = True,
        seed: int = 0,
    ):
        columns = _column_names(dataset)
        if columns is not None and image_column not in columns:
            raise ValueError(
                f"The dataset has no column {image_column!r}; its columns are {list(columns)}. Pass the column that "
                "holds the images as `image_column` (`--image-column` on the command line)."
            )
        self.dataset = dataset
        self.config = config
        self.image_column = image_column
        self.transform = UniFlowImageTransform(processor or UniFlowImageProcessor.from_image_size(config.image_size), augment=augment)
        height, width = self.transform.output_size
        if height % config.patch_size or width % config.patch_size:
            raise ValueError(
                f"The processor crops images to {height}x{width}, not a multiple of the model's patch size "
                f"{config.patch_size}; set its `crop_size` to a multiple (e.g. {config.image_size})."
            )
        self.num_tokens = (height // config.patch_size) * (width // config.patch_size)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _example(self, row: Any, key: int, where: str) -> dict[str, torch.Tensor]:
        """The training example of `row`, its draws keyed by (seed, epoch, `key`); `where` names it in errors."""
        if not isinstance(row, dict) or self.image_column not in row:
            found = list(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{where} of the dataset has no {self.image_column!r} column (it holds {found}).")
        generator = sample_generator(self.seed, self.epoch, key)
        try:
            pixel_values = self.transform(row[self.image_column], generator)
        except (ValueError, TypeError, OSError) as error:
            raise ValueError(f"{where}, column {self.image_column!r}: cannot use it as an image: {error}") from error
        noise, timesteps = draw_flow_training_inputs(self.config, 1, self.num_tokens, generator=generator)
        if self.config.flow_samples_per_token == 1:
            noise, timesteps = noise[:, 0], timesteps[:, 0]
        return {"pixel_values": pixel_values, "noise": noise[0], "timesteps": timesteps[0]}


class UniFlowTrainingDataset(_UniFlowSampleDraws, torch.utils.data.Dataset):
    """Wraps a map-style image dataset for `UniFlowModel` training: item `i` is a dict of `pixel_values` (3, H, W),
    `noise` (draws, N, C·p·p) and `timesteps` (draws, N) (network time 1000·t per patch token and draw), drawn as
    the model's config says (`flow_timestep_*`, draws = `flow_samples_per_token`; the draws axis is left out when it
    is 1) by `flow_matching.draw_flow_training_inputs`, as `UniFlowModel.forward` draws them itself.

    The augmentation, noise and timesteps of item `i` are drawn from `sample_generator(seed, epoch, i)`: identical
    whatever the number of processes or data workers, and after resuming. `set_epoch` (called by `UniFlowTrainer` at
    each epoch) gives fresh draws per epoch. Streams (`datasets.IterableDataset`) go to
    `UniFlowIterableTrainingDataset`.

    Args:
        dataset: a `datasets.Dataset` (e.g. `load_dataset("imagefolder", ...)["train"]`) or any map-style dataset of
            dicts holding `image_column`.
        config: the model's `UniFlowConfig` (patch size and channels of the noise).
        processor: a `UniFlowImageProcessor` (default: `UniFlowImageProcessor.from_image_size(config.image_size)`).
        image_column: the column holding the images.
        augment: random resized crop + horizontal flip (see `UniFlowImageTransform`); off for evaluation.
        seed: base seed of the per-sample draws.
    """

    def __init__(self, dataset: Any, *args, **kwargs):
        _check_map_style_dataset(dataset)
        super().__init__(dataset, *args, **kwargs)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self._example(self.dataset[index], index, f"Row {index}")


class UniFlowIterableTrainingDataset(_UniFlowSampleDraws, torch.utils.data.IterableDataset):
    """`UniFlowTrainingDataset` for a stream: a `datasets.IterableDataset` (`load_dataset(..., streaming=True)`,
    `Dataset.to_iterable_dataset(num_shards=...)`, sharded parquet or webdataset files), for data too large to index.

    Under `torch.distributed` each process reads its own part of the stream,
    `datasets.distributed.split_dataset_by_node` of the default group (whole shards when their number is a multiple
    of the world size, else every world-size-th example), and data workers split their process's shards again.
    The draws of a sample are keyed by (seed, epoch, position), the position being its running index in the
    stream as the processes and workers interleave it: `(i · workers + worker) · world_size + rank` for the i-th
    sample a worker reads. One process without workers numbers the stream 0, 1, 2... as the map-style dataset numbers
    its rows, so the same stream gives the same training; with "every world-size-th example" splitting the
    position is the sample's index in the whole stream, whatever the world size.

    `set_epoch` (called by the Trainer before each pass) also reaches the stream (`IterableDataset.set_epoch`: a
    shuffled stream reshuffles per epoch). Resuming (`resume_from_checkpoint`): the Trainer reads through and drops
    the batches consumed since the start of the stream, so the run continues on the same samples and draws while
    it is in its first pass over the stream (the Trainer cannot count passes over a stream of unknown length; pass
    `ignore_data_skip=True` to start the stream over instead, which does not repeat the same samples). With several
    processes every one must get the same number of batches: use a stream longer than `max_steps` needs
    (`IterableDataset.repeat(None)` makes it endless), or one whose split gives equal parts.

    Args: as `UniFlowTrainingDataset`'s, `dataset` being a `datasets.IterableDataset` of dicts holding `image_column`.
    """

    def __init__(self, dataset: Any, *args, **kwargs):
        import datasets

        if isinstance(dataset, datasets.IterableDatasetDict):
            raise TypeError(f"Got an IterableDatasetDict with splits {list(dataset)}; pass one split (e.g. dataset['train']).")
        if not isinstance(dataset, datasets.IterableDataset):
            raise TypeError(
                f"Expected a `datasets.IterableDataset` (e.g. `load_dataset(..., streaming=True)`), got "
                f"{type(dataset).__name__}; wrap other iterables with `datasets.IterableDataset.from_generator`."
            )
        super().__init__(dataset, *args, **kwargs)

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


def _check_map_style_dataset(dataset: Any) -> None:
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise TypeError(f"Got a DatasetDict with splits {list(dataset)}; pass one split (e.g. dataset['train']).")
    if isinstance(dataset, datasets.IterableDataset):
        raise TypeError(
            "Got a stream (`datasets.IterableDataset`): wrap it with `UniFlowIterableTrainingDataset` "
            "(`train_tokenizer` does so for its training set; evaluation sets must be map-style)."
        )
    if isinstance(dataset, torch.utils.data.IterableDataset):
        raise TypeError(
            f"Got a torch IterableDataset ({type(dataset).__name__}): the per-sample draws need a map-style dataset "
            "or a `datasets.IterableDataset` (e.g. `datasets.IterableDataset.from_generator`)."
        )
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(f"Expected a map-style dataset (with __len__ and __getitem__), got {type(dataset).__name__}.")


def _column_names(dataset: Any) -> Sequence[str] | None:
    columns = getattr(dataset, "column_names", None)
    return list(columns) if isinstance(columns, (list, tuple)) else None


# ------------------------------------------------------------------------------------------------ the trainer
def distillation_layer_name(prefix: str, layer: int, num_layers: int) -> str:
    """Log name of a per-layer quantity, e.g. `distill_w/layer_03` (1-based layer, zero-padded)."""
    return f"{prefix}/layer_{layer:0{max(2, len(str(num_layers)))}d}"


def loss_parts(outputs: Any) -> dict[str, torch.Tensor]:
    """The detached loss parts of a `UniFlowModelOutput` under their log names."""
    parts = {}
    for name in ("flow_loss", "distillation_loss"):
        value = outputs.get(name) if hasattr(outputs, "get") else None
        if value is not None:
            parts[name] = value.detach().float()
    for prefix, name in (("distill_w", "distillation_weights"), ("distill_cos", "distillation_cosine")):
        values = outputs.get(name) if hasattr(outputs, "get") else None
        if values is not None:
            for layer, value in enumerate(values.detach().float(), start=1):
                parts[distillation_layer_name(prefix, layer, len(values))] = value
    return parts


class _RunningMeans:
    """Sums of named scalar tensors since the last `pop`, kept on device (no synchronisation per step)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.count += 1

    def pop(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """Means since the last call (averaged over processes by `reduce`), then reset."""
        if not self.count:
            return {}
        names = sorted(self.sums)
        means = torch.stack([self.sums[name] for name in names]) / self.count
        if reduce is not None:
            means = reduce(means)
        self.sums, self.count = {}, 0
        return dict(zip(names, means.tolist()))


class _DatasetEpochCallback(TrainerCallback):
    """Tells the training dataset the epoch that starts. accelerate forwards `set_epoch` to the dataset only for some
    samplers (not the sharded one of multi-process runs), and the per-sample draws depend on it."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(math.floor(state.epoch + 1e-6))  # the Trainer's epoch counter (resumes mid-epoch)


class UniFlowTrainer(Trainer):
    """A `Trainer` for `UniFlowModel` (plain or wrapped by PEFT) that also logs the loss parts: `flow_loss`,
    `distillation_loss`, and per encoder layer the distillation weight `distill_w/layer_XX` and the student-teacher
    cosine `distill_cos/layer_XX`, as running means over each logging interval averaged over processes. Evaluation
    computes the same losses (the model's `return_loss=True` in eval mode) and reports `eval_loss`,
    `eval_flow_loss`, ... — deterministic with a `UniFlowTrainingDataset` built with `augment=False`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._train_parts = _RunningMeans()
        self._eval_parts = _RunningMeans()
        self.add_callback(_DatasetEpochCallback())
        if self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0:
            logger.warning(
                "With persistent data workers the datasets in the workers do not see the epoch change: each epoch "
                "would repeat the augmentation, noise and timesteps of the first. Prefer non-persistent workers."
            )

    def get_train_dataloader(self):
        """For a stream (`UniFlowIterableTrainingDataset`), which already splits itself between the processes, a
        dataloader that accelerate neither splits again nor feeds from the main process only."""
        if not isinstance(self.train_dataset, UniFlowIterableTrainingDataset):
            return super().get_train_dataloader()
        from accelerate.data_loader import prepare_data_loader

        workers = self.args.dataloader_num_workers
        loader = torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            drop_last=self.args.dataloader_drop_last,
        )
        return prepare_data_loader(
            loader, self.args.device, num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        (self._train_parts if model.training else self._eval_parts).add(loss_parts(outputs))
        return (loss, outputs) if return_outputs else loss

    def _mean_across_processes(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over the processes of the default `torch.distributed` group, the group the model averages the
        distillation's α over: the logs then agree with the model under DDP, FSDP and DeepSpeed alike (accelerate's
        own process count can be 1 while the group holds several, e.g. DeepSpeed on a machine without GPUs, which
        doubled the logged values of 2 processes)."""
        return reduce_across_processes(values.to(self.args.device)).cpu()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs carry "loss" and are emitted by every process at the same step, so averaging is safe there.
        if "loss" in logs:
            logs.update(self._train_parts.pop(self._mean_across_processes))
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The evaluation loss: the training losses of the model in eval mode (no reconstructions are gathered)."""
        return super().prediction_step(model, {**inputs, "return_loss": True}, True, ignore_keys=ignore_keys)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        self._eval_parts = _RunningMeans()
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        for name, value in self._eval_parts.pop(self._mean_across_processes).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output


# ------------------------------------------------------------------------------------------------------- LoRA
def _unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _layer_linear_pattern(root: nn.Module, prefix: str, layer_classes: tuple[type, ...], exclude=()) -> list[str]:
    """Regexes (one per stack of layers) matching the `nn.Linear` modules inside the `layer_classes` modules of
    `root`, e.g. `vision_model\\.encoder\\.layers\\.\\d+\\.(attn\\.qkv|attn\\.proj|mlp\\.fc1|mlp\\.fc2)`."""
    stacks: dict[str, set[str]] = {}
    for layer_name, layer in root.named_modules():
        if not isinstance(layer, layer_classes):
            continue
        container, _, index = (prefix + layer_name).rpartition(".")
        stack = re.escape(container + ".") + r"\d+" if index.isdigit() else re.escape(prefix + layer_name)
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in exclude:
                stacks.setdefault(stack, set()).add(re.escape(name))
    return [f"{stack}\\.({'|'.join(sorted(names))})" for stack, names in stacks.items()]


def lora_target_modules(model: UniFlowModel, targets: str = "both") -> str:
    """A PEFT `target_modules` regex for LoRA on a `UniFlowModel`:

    - `"encoder"`: every linear layer inside the encoder's transformer layers (e.g. `attn.qkv`, `attn.proj`,
      `mlp.fc1`, `mlp.fc2` of UniFlow's encoder; `q_proj`... of CLIP/SigLIP; `query`... of DINOv2);
    - `"decoder"`: the attention and MLP linears of the global blocks and `fc1`/`fc2` of the flow-head blocks
      (not their adaLN modulations);
    - `"both"`.
    The frozen distillation teacher is never targeted."""
    from .modeling.modeling_uniflow import UniFlowFlowHeadBlock, UniFlowGlobalBlock

    if targets not in LORA_TARGETS:
        raise ValueError(f"`targets` must be one of {LORA_TARGETS}, got {targets!r}.")
    model = _unwrap(model)
    patterns = []
    if targets in ("encoder", "both"):
        encoder = model.vision_model
        recorder = getattr(type(encoder), "_can_record_outputs", None) or {}
        layer_class = getattr(recorder.get("hidden_states"), "target_class", recorder.get("hidden_states"))
        if isinstance(layer_class, type):
            patterns += _layer_linear_pattern(encoder, "vision_model.", (layer_class,))
        else:  # no declared layer class: every linear layer of the encoder
            names = sorted({re.escape(n) for n, m in encoder.named_modules() if isinstance(m, nn.Linear)})
            patterns += [f"vision_model\\.({'|'.join(names)})"] if names else []
        if not patterns:
            raise ValueError(f"Found no linear layers to adapt in the encoder {type(encoder).__name__}.")
    if targets in ("decoder", "both"):
        patterns += _layer_linear_pattern(model.global_blocks, "global_blocks.", (UniFlowGlobalBlock,))
        patterns += _layer_linear_pattern(
            model.flow_head, "flow_head.", (UniFlowFlowHeadBlock,), exclude=("modulation",)
        )
    return "|".join(f"(?:{pattern})" for pattern in patterns)


def lora_config_for(model: UniFlowModel, targets: str = "both", r: int = 8, lora_alpha: int | None = None, **lora_kwargs):
    """A `peft.LoraConfig` of rank `r` (`lora_alpha` = 2r by default) on `lora_target_modules(model, targets)`;
    `lora_kwargs` go to `LoraConfig` (e.g. `lora_dropout`)."""
    from peft import LoraConfig

    alpha = 2 * r if lora_alpha is None else lora_alpha
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=lora_target_modules(model, targets), **lora_kwargs)


def apply_lora(model: UniFlowModel, targets: str = "both", r: int = 8, lora_alpha: int | None = None, **lora_kwargs):
    """Wrap `model` with PEFT LoRA adapters (`lora_config_for`). Enable the distillation teacher before
    (`model.enable_distillation()`), so that it stays the adapter-free encoder, or pass the config to
    `train_tokenizer(..., lora_config=lora_config_for(model, ...))`, which orders both. Returns the `PeftModel`:
    train it with `train_tokenizer` or the Trainer; `save_pretrained` saves the adapters, `merge_and_unload()` folds
    them in."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config_for(model, targets, r, lora_alpha, **lora_kwargs))


# ----------------------------------------------------------------------------------------------- launchers
def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def _launched_processes() -> int:
    """The number of processes torchrun / `accelerate launch` started (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_cpu_launch(deepspeed: Any = None) -> None:
    """Refuse the launches that cannot shard on a machine without an accelerator, before any work:
    `accelerate launch --cpu --num_processes N` (it starts one process: accelerate starts several CPU processes only
    through MPI) and DeepSpeed (`deepspeed` config, or an accelerate DeepSpeed config). Accelerate's FSDP runs as
    DDP there, with a warning."""
    if _has_accelerator():
        return
    use_deepspeed = deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if use_deepspeed:
        import importlib.util

        installed = "is installed" if importlib.util.find_spec("deepspeed") else "is not installed here"
        raise ValueError(
            f"DeepSpeed (--deepspeed, or an accelerate DeepSpeed config) runs on GPUs; this machine has none and "
            f"DeepSpeed {installed}. On CPU launch the same command without it: `torchrun --nproc_per_node N` or "
            "`accelerate launch --multi_gpu --num_processes N` train data-parallel across the CPU processes."
        )
    if _launched_processes() > 1 and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        logger.warning_once(
            "Accelerate runs FSDP on accelerators only: on this CPU machine the processes train data-parallel "
            "(DDP), each holding the whole model."
        )
    single_cpu_process = os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true" and "MASTER_ADDR" in os.environ
    if single_cpu_process and "WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ:
        raise ValueError(
            "`accelerate launch --cpu --num_processes N` started this single process (accelerate starts several CPU "
            "processes only through MPI, with --mpirun_hostfile). Launch N CPU processes with `accelerate launch "
            "--multi_gpu --num_processes N ...` or `torchrun --nproc_per_node N ...` (no --cpu: on a machine without "
            "GPUs they train on the CPU, sharded), or drop --num_processes for one process."
        )


def cpu_processes_need_use_cpu() -> bool:
    """Whether a launcher started several processes on a machine without an accelerator: `TrainingArguments` then
    needs `use_cpu` for them to form one (gloo) group and shard the data — without it transformers and accelerate
    set up the distributed mode for accelerators only, and each process trains alone on all the data."""
    return _launched_processes() > 1 and not _has_accelerator()


def shard_across_cpu_processes(training_args: TrainingArguments) -> TrainingArguments:
    """`check_cpu_launch`, then, when `cpu_processes_need_use_cpu` and `training_args` were made without `use_cpu`,
    switch them to it (in place) so that the processes train as one data-parallel run, as on GPUs."""
    check_cpu_launch(getattr(training_args, "deepspeed", None))
    if not cpu_processes_need_use_cpu() or training_args.use_cpu or training_args.world_size > 1:
        return training_args
    logger.info(f"{_launched_processes()} processes and no accelerator: training on the CPU, sharded (use_cpu).")
    training_args.use_cpu = True
    training_args.dataloader_pin_memory = False
    training_args.ddp_backend = training_args.ddp_backend or "gloo"
    training_args.__dict__.pop("_setup_devices", None)  # the cached device set-up, redone with use_cpu
    _ = training_args.device
    return training_args


def close_process_group() -> None:
    """End a launched run: collect the trainer's unreachable objects first, then destroy the default process group.

    In this order because the reducer of a DDP-wrapped model holds a reference to the group: freed after
    `destroy_process_group`, it holds the last one and destroys the gloo group while holding the GIL, joining gloo's
    worker threads, one of which may need the GIL to free the tensors of a finished collective (an all-gather) — a
    deadlock at exit, one worker never ending (about 1 run in 3 on CPU; `benchmarks/repeat_fsdp2_cpu.py`). Freed
    while the group is still registered, the reducer drops a reference that is not the last, and the group is then
    destroyed from Python, whose binding releases the GIL. Callers drop their own references to the trainer first."""
    import gc

    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_training_numbers(training_args: TrainingArguments) -> None:
    """Refuse nonsense step and batch numbers before any work (`TrainingArguments` takes them, and the Trainer would
    train anyway: a negative `max_steps` as epochs, a zero batch until it fails)."""
    args = training_args
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
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise ValueError(
                f"--{name.replace('_', '-')} must be > 0 (a number of steps, or a share of the run below 1), got "
                f"{getattr(args, name)}."
            )
    if args.learning_rate < 0:
        raise ValueError(f"--learning-rate must be >= 0, got {args.learning_rate}.")


def prepare_training_arguments(training_args: TrainingArguments) -> TrainingArguments:
    """What every training entry point runs first: `check_training_numbers`, then `shard_across_cpu_processes`."""
    check_training_numbers(training_args)
    return shard_across_cpu_processes(training_args)


# ----------------------------------------------------------------------------------------------- entry point
def _check_precision(training_args: TrainingArguments) -> None:
    """Refuse half precision on CPU (set by --bf16/--fp16 or by accelerate's ACCELERATE_MIXED_PRECISION)."""
    half = training_args.bf16 or training_args.fp16 or getattr(training_args, "mixed_precision", "no") in ("bf16", "fp16")
    if half and training_args.device.type == "cpu":
        raise ValueError(
            "bf16/fp16 mixed precision is not supported for UniFlow training on CPU: train in float32 (drop "
            "--bf16/--fp16, or mixed_precision from the accelerate config), or train on a GPU."
        )


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
    """Train a UniFlow tokenizer (flow loss + layer-wise adaptive self-distillation) with `UniFlowTrainer`.

    - `model`: a `UniFlowModel`, normally the pretrained starting point (`from_pretrained`, `from_encoder`): its
      current encoder becomes the frozen distillation teacher (`model.enable_distillation()`) unless
      `distillation=False`, `config.distillation_mode == "none"`, or `config.freeze_encoder` (then the encoder is
      frozen: `requires_grad_(False)`, and only the decoder side trains). A teacher already set is kept.
    - `train_dataset` / `eval_dataset`: image datasets with `image_column` (see `UniFlowTrainingDataset`; the
      evaluation set is not augmented and its draws are fixed, so its loss is comparable across evaluations). The
      training set may be a stream, a `datasets.IterableDataset` (see `UniFlowIterableTrainingDataset`: split between
      processes, resume, `max_steps` required).
    - `training_args`: any `TrainingArguments` (`gradient_checkpointing`, multi-GPU through torchrun / accelerate,
      `save_steps`...). bf16/fp16 on CPU is refused. The per-sample draws are seeded by `data_seed` (else `seed`).
    - `lora_config`: a `peft.LoraConfig` to train adapters only (see `lora_target_modules` / `apply_lora`).
    - `resume_from_checkpoint`: a checkpoint folder or True (the last completely written one in `output_dir`,
      `io.last_complete_checkpoint`); default
      `training_args.resume_from_checkpoint`. Build `model` as for the first run: the teacher is never saved.
    - `save_model`: save the final model (or adapters) and the processor to `training_args.output_dir`; under FSDP
      the full state dict is gathered for it (whatever `fsdp_state_dict_type` the checkpoints use), and under
      DeepSpeed ZeRO-3 the config's `stage3_gather_16bit_weights_on_model_save` does the same (examples/).

    Returns the trainer (`trainer.model`, `trainer.state.log_history`...).
    """
    base_model = _unwrap(model)
    if not isinstance(base_model, UniFlowModel):
        raise TypeError(f"`model` must be a UniFlowModel (or a PEFT model of one), got {type(model).__name__}.")
    has_adapters = base_model is not model
    if has_adapters and lora_config is not None:
        raise ValueError("`model` already has adapters: pass either a PEFT model or `lora_config`, not both.")
    prepare_training_arguments(training_args)
    _check_precision(training_args)
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
    train_class = UniFlowIterableTrainingDataset if isinstance(train_dataset, datasets.IterableDataset) else UniFlowTrainingDataset
    wrapped = {"train": train_class(train_dataset, config, processor, image_column, augment=augment, seed=seed)}
    if eval_dataset is not None:
        wrapped["eval"] = UniFlowTrainingDataset(eval_dataset, config, processor, image_column, augment=False, seed=seed)
    trainer = UniFlowTrainer(
        model=model,
        args=training_args,
        train_dataset=wrapped["train"],
        eval_dataset=wrapped.get("eval"),
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
    """`trainer.save_model()` to `args.output_dir` with whole weights: under FSDP the checkpoints may be sharded, so
    the final save gathers a full state dict (DeepSpeed ZeRO-3 gathers in `save_model` itself); the main process
    writes, so the folder (or adapter) loads with plain `from_pretrained`."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model()


__all__ = [
    "LORA_TARGETS",
    "UniFlowImageTransform",
    "UniFlowIterableTrainingDataset",
    "UniFlowTrainer",
    "save_final_model",
    "UniFlowTrainingDataset",
    "apply_lora",
    "check_cpu_launch",
    "check_training_numbers",
    "close_process_group",
    "cpu_processes_need_use_cpu",
    "lora_config_for",
    "lora_target_modules",
    "loss_parts",
    "prepare_training_arguments",
    "sample_generator",
    "shard_across_cpu_processes",
    "train_tokenizer",
]
