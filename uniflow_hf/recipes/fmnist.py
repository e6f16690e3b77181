"""UniFlow-FMNIST, the shipped model's recipe: the UniFlow recipe at small scale on Fashion-MNIST (Debian's
`dataset-fashion-mnist`), offline on a CPU, in the stages of `uniflow-hf fmnist`: a. `pretrain-encoder`, b. `adapt`,
b'. `finetune-decoder`, c. `train-generator`."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..modeling import UniFlowImageProcessor


FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
]
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# The UniFlow-FMNIST architecture: 28 px, patch 7 -> a 4x4 grid of tokens with 16 latent channels each.
FMNIST_ENCODER_CONFIG = dict(
    image_size=28, patch_size=7, hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4
)
FMNIST_DECODER_CONFIG = dict(
    latent_channels=16, num_global_blocks=2, global_num_attention_heads=4, num_flow_head_blocks=4,
    flow_head_width=256, num_sampling_steps=1,
)
FMNIST_MODEL_CONFIG = {**FMNIST_ENCODER_CONFIG, **FMNIST_DECODER_CONFIG}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def load_fashion_mnist_arrays(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the `train` (60k) or `test` (10k) split."""
    if split not in _FILES:
        raise ValueError(f"Unknown Fashion-MNIST split {split!r}: expected 'train' or 'test'.")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    paths = [root / name for name in _FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({', '.join(missing)}). Install it with `apt-get install -y "
            "dataset-fashion-mnist` (Debian/Ubuntu), or point FASHION_MNIST_DIR at a folder with its four IDX files."
        )
    images, labels = (_read_idx(p) for p in paths)
    return images, labels.astype(np.int64)


def load_fashion_mnist(root: str | Path | None = None, max_per_split: int | None = None):
    """Fashion-MNIST as a `datasets.DatasetDict` with `image` (grayscale PIL) and `label` (`ClassLabel`) columns."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_LABELS)})
    splits = {}
    for split in _FILES:
        images, labels = load_fashion_mnist_arrays(split, root)
        if max_per_split is not None:
            images, labels = images[:max_per_split], labels[:max_per_split]
        splits[split] = datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)
    return datasets.DatasetDict(splits)


def fmnist_pixel_values(images: np.ndarray, processor=None, batch_size: int = 2048) -> torch.Tensor:
    """uint8 (N, 28, 28) -> the model's normalised (N, 3, 28, 28) input, through `UniFlowImageProcessor`."""
    from PIL import Image

    processor = processor or UniFlowImageProcessor.from_image_size(images.shape[-1])
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = [Image.fromarray(image, mode="L") for image in images[start : start + batch_size]]
        chunks.append(processor(batch, return_tensors="pt").pixel_values)
    return torch.cat(chunks)


class TensorImageDataset(torch.utils.data.Dataset):
    """Preprocessed `pixel_values` (and optional `labels`) for the Trainer, with seeded random horizontal flips."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, flip: bool = False, seed=0):
        self.pixel_values, self.labels, self.flip = pixel_values, labels, flip
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return len(self.pixel_values)

    def __getitem__(self, index):
        pixel_values = self.pixel_values[index]
        if self.flip and torch.rand((), generator=self.generator) < 0.5:
            pixel_values = pixel_values.flip(-1)
        item = {"pixel_values": pixel_values}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


@torch.no_grad()
def classification_accuracy(model, pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(pixel_values), batch_size):
        logits = model(pixel_values[start : start + batch_size]).logits
        correct += (logits.argmax(-1) == labels[start : start + batch_size]).sum().item()
    return correct / len(pixel_values)


def pretrain_encoder(output_dir: str, epochs: float = 2.0, max_train: int | None = None, seed: int = 0, **train_kwargs):
    """Stage a: train `UniFlowForImageClassification` from scratch on Fashion-MNIST; saves it with its test accuracy."""
    from transformers import set_seed

    from ..modeling import UniFlowConfig, UniFlowForImageClassification

    set_seed(seed)
    config = UniFlowConfig(
        **FMNIST_MODEL_CONFIG,
        id2label=dict(enumerate(FASHION_MNIST_LABELS)),
        label2id={name: i for i, name in enumerate(FASHION_MNIST_LABELS)},
    )
    model = UniFlowForImageClassification(config)
    _train_on_fmnist(model, output_dir, epochs, max_train, seed, with_labels=True, **train_kwargs)
    test_images, test_labels = load_fashion_mnist_arrays("test")
    accuracy = classification_accuracy(model, fmnist_pixel_values(test_images), torch.from_numpy(test_labels))
    model.config.test_accuracy = accuracy
    _save_with_processor(model, output_dir)
    print(f"pretrained encoder: test accuracy {accuracy:.4f} -> {output_dir}")
    return accuracy


def adapt_tokenizer(
    encoder_dir: str, output_dir: str, epochs: float = 1.0, max_train: int | None = None, seed: int = 0,
    distillation_mode: str = "adaptive", freeze_encoder: bool = False, init_tokenizer: str | None = None,
    config_overrides: dict | None = None, **train_kwargs,
):
    """Stage b: UniFlow adaptation of the pretrained encoder (distillation against its frozen copy + patch flow loss),
    or of the adapted tokenizer `init_tokenizer`. `config_overrides` sets training fields of the tokenizer's config."""
    from transformers import set_seed

    from ..modeling import UniFlowForImageClassification, UniFlowModel

    set_seed(seed)
    classifier = UniFlowForImageClassification.from_pretrained(encoder_dir, dtype=torch.float32)
    if init_tokenizer is not None:
        model = UniFlowModel.from_pretrained(init_tokenizer, dtype=torch.float32)
        model.config.distillation_mode, model.config.freeze_encoder = distillation_mode, freeze_encoder
    else:
        model = UniFlowModel.from_encoder(
            classifier.vision_model, **FMNIST_DECODER_CONFIG, distillation_mode=distillation_mode,
            freeze_encoder=freeze_encoder,
        )
    _override_config(model.config, config_overrides)
    if distillation_mode != "none":
        model.enable_distillation(teacher=classifier.vision_model)
    if freeze_encoder:
        model.vision_model.requires_grad_(False)
    train_kwargs = {"learning_rate": 1e-3, "weight_decay": 0.0, **train_kwargs}
    _train_on_fmnist(model, output_dir, epochs, max_train, seed, **train_kwargs)
    model.disable_distillation()
    _save_with_processor(model, output_dir)
    print(f"adapted tokenizer -> {output_dir}")
    return model


def finetune_decoder(
    tokenizer_dir: str, output_dir: str, epochs: float = 1.0, max_train: int | None = None, seed: int = 0,
    config_overrides: dict | None = None, **train_kwargs,
):
    """Stage b': train only the decoder of an adapted tokenizer with the flow loss; the encoder and `latent_proj` stay
    frozen, so the latents (and a generator trained on them) are unchanged."""
    from transformers import set_seed

    from ..modeling import UniFlowModel

    set_seed(seed)
    model = UniFlowModel.from_pretrained(tokenizer_dir, dtype=torch.float32)
    _override_config(model.config, config_overrides)
    freeze_encoder = model.config.freeze_encoder
    model.config.freeze_encoder = True  # no encoder gradients, no distillation
    model.vision_model.requires_grad_(False)
    model.latent_proj.requires_grad_(False)
    train_kwargs = {"learning_rate": 5e-4, "weight_decay": 0.0, **train_kwargs}
    _train_on_fmnist(model, output_dir, epochs, max_train, seed, **train_kwargs)
    model.config.freeze_encoder = freeze_encoder
    _save_with_processor(model, output_dir)
    print(f"decoder fine-tuned tokenizer -> {output_dir}")
    return model


def _train_on_fmnist(
    model, output_dir: str, epochs: float, max_train: int | None, seed: int, with_labels: bool = False, **train_kwargs
) -> None:
    from transformers import Trainer, TrainingArguments

    from ..training import UniFlowTrainer

    train_images, train_labels = load_fashion_mnist_arrays("train")
    if max_train:
        train_images, train_labels = train_images[:max_train], train_labels[:max_train]
    labels = torch.from_numpy(train_labels) if with_labels else None
    train = TensorImageDataset(fmnist_pixel_values(train_images), labels, flip=True, seed=seed)
    args = dict(
        output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=128, learning_rate=1e-3,
        weight_decay=0.05, warmup_steps=0.05, lr_scheduler_type="cosine", logging_steps=50, save_strategy="no",
        report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=seed, data_seed=seed,
        disable_tqdm=False,
    )  # warmup_steps < 1: a fraction of the run
    trainer_class = Trainer if with_labels else UniFlowTrainer
    trainer_class(model=model, args=TrainingArguments(**{**args, **train_kwargs}), train_dataset=train).train()


def _save_with_processor(model, output_dir: str) -> None:
    model.save_pretrained(output_dir)
    UniFlowImageProcessor.from_image_size(model.config.image_size).save_pretrained(output_dir)


def _override_config(config, overrides: dict | None) -> None:
    for name, value in (overrides or {}).items():
        if not hasattr(config, name):
            raise ValueError(f"`{name}` is not a field of UniFlowConfig.")
        setattr(config, name, value)
    config._validate()


def to_unit_range(pixel_values: torch.Tensor, processor=None) -> torch.Tensor:
    """Model-space (normalised) pixels -> [0, 1] grayscale (N, 28, 28): the mean of the three equal channels."""
    processor = processor or UniFlowImageProcessor.from_image_size(pixel_values.shape[-1])
    return processor.postprocess(pixel_values, output_type="pt").mean(dim=1)


@torch.no_grad()
def reconstruct_grayscale(
    tokenizer, pixel_values: torch.Tensor, batch_size: int = 500, seed: int = 0, num_inference_steps: int | None = None,
    latent_scale: float = 1.0,
) -> torch.Tensor:
    """The reconstructions of `pixel_values` (one seeded generator; latents times `latent_scale`) as [0, 1] grayscale
    images (N, H, W)."""
    tokenizer.eval()
    generator = torch.Generator().manual_seed(seed)
    images = []
    for start in range(0, len(pixel_values), batch_size):
        batch = pixel_values[start : start + batch_size]
        decoded = tokenizer.decode(
            tokenizer.encode(batch) * latent_scale, generator=generator, num_inference_steps=num_inference_steps,
            height=batch.shape[-2], width=batch.shape[-1],
        )
        images.append(to_unit_range(decoded))
    return torch.cat(images)


# stage c's defaults (`uniflow-hf fmnist train-generator`): GeneratorTrainingArguments fields
FMNIST_GENERATOR_DEFAULTS = dict(
    max_steps=7000, per_device_train_batch_size=128, learning_rate=5e-4, label_dropout=0.1, seed=0,
    encode_batch_size=1000, save_strategy="no", logging_steps=100,
)


def train_fmnist_generator(tokenizer_dir: str, args, max_train: int | None = None):
    """Stage c: `train_generator` with `args` on the tokenizer's latents of the training images; a pipeline folder in
    `args.output_dir`."""
    from ..generator_training import train_generator
    from ..modeling import UniFlowModel

    tokenizer = UniFlowModel.from_pretrained(tokenizer_dir, dtype=torch.float32)
    dataset = load_fashion_mnist(max_per_split=max_train)["train"]
    result = train_generator(tokenizer, dataset, args)
    last = result.losses[-100:]
    print(f"generator: final loss {sum(last) / max(1, len(last)):.4f} -> {args.output_dir}")
    return result.pipeline
