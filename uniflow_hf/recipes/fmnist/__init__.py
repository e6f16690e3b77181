"""UniFlow-FMNIST: the UniFlow recipe at small scale on Fashion-MNIST (`uniflow-hf fmnist ...`), the shipped model's
recipe. See `recipe.py`."""

from .recipe import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    FMNIST_MODEL_CONFIG,
    JudgeCNN,
    TensorImageDataset,
    adapt_tokenizer,
    classification_accuracy,
    encoder_features,
    finetune_decoder,
    fmnist_pixel_values,
    judge_outputs,
    linear_probe_accuracy,
    load_fashion_mnist,
    load_fashion_mnist_arrays,
    pretrain_encoder,
    reconstruct_grayscale,
    reconstruction_metrics,
    to_unit_range,
    train_fmnist_generator,
    train_judge,
)


__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_LABELS",
    "FMNIST_MODEL_CONFIG",
    "JudgeCNN",
    "TensorImageDataset",
    "adapt_tokenizer",
    "classification_accuracy",
    "encoder_features",
    "finetune_decoder",
    "fmnist_pixel_values",
    "judge_outputs",
    "linear_probe_accuracy",
    "load_fashion_mnist",
    "load_fashion_mnist_arrays",
    "pretrain_encoder",
    "reconstruct_grayscale",
    "reconstruction_metrics",
    "to_unit_range",
    "train_fmnist_generator",
    "train_judge",
]
