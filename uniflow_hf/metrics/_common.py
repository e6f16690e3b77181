# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The math behind the metric modules, shared by them and by `uniflow_hf.evaluation`: images are (batch, channels,
height, width) tensors in [0, data_range]; everything is computed in float64."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _check_image_pair(predictions: torch.Tensor, references: torch.Tensor, data_range: float) -> None:
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or data_range <= 0:
        raise ValueError(f"`data_range` must be a positive number (1.0 for images in [0, 1]), got {data_range!r}.")
    for name, images in (("predictions", predictions), ("references", references)):
        if not (isinstance(images, torch.Tensor) and images.is_floating_point()):
            raise TypeError(
                f"`{name}` must be a floating-point tensor with values in [0, {data_range}] (e.g. "
                f"`uint8_images.float() / 255` with data_range=1), got {getattr(images, 'dtype', type(images))}."
            )
        if images.ndim != 4:
            raise ValueError(f"`{name}` must have shape (batch, channels, height, width), got {tuple(images.shape)}.")
        if not torch.isfinite(images).all():
            raise ValueError(f"`{name}` contains NaN or infinite values.")
        low, high = images.min().item(), images.max().item()
        if low < 0 or high > data_range:
            raise ValueError(
                f"`{name}` has values in [{low:.4g}, {high:.4g}] but must lie in [0, data_range={data_range}]. Map "
                "model outputs to [0, 1] with `UniFlowImageProcessor.postprocess(x, output_type='pt')` (not the "
                "normalised `pixel_values`), or pass the `data_range` of your images."
            )
    if predictions.shape != references.shape:
        raise ValueError(
            f"`predictions` and `references` must have the same shape, got {tuple(predictions.shape)} and "
            f"{tuple(references.shape)}."
        )


def images_to_tensors(images: Sequence[Any], name: str) -> list[torch.Tensor]:
    """Channels-last images ((H, W, C) or (H, W), as the `evaluate` modules receive them) -> float64 (1, C, H, W)."""
    tensors = []
    for index, image in enumerate(images):
        array = np.asarray(image, dtype=np.float64)
        array = array[..., None] if array.ndim == 2 else array
        if array.ndim != 3 or 0 in array.shape[:2] or array.shape[2] not in (1, 3, 4):
            raise ValueError(
                f"{name}[{index}] has shape {array.shape}: expected a channels-last image (height, width, channels) "
                "with 1, 3 or 4 channels, or a (height, width) grayscale image."
            )
        tensors.append(torch.from_numpy(array).permute(2, 0, 1)[None])
    return tensors


def peak_signal_noise_ratio(
    predictions: torch.Tensor, references: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """Per-image PSNR in dB, (B,) float64, as `skimage.metrics.peak_signal_noise_ratio`; +inf for identical images."""
    _check_image_pair(predictions, references, data_range)
    mse = (predictions.double() - references.double()).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def structural_similarity(
    predictions: torch.Tensor,
    references: torch.Tensor,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image SSIM, (B,) float64, as `skimage.metrics.structural_similarity(reference, prediction,
    channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`: an 11x11 Gaussian window,
    averaged over the channels and the pixels whose window lies inside the image."""
    _check_image_pair(predictions, references, data_range)
    radius = int(3.5 * sigma + 0.5)  # scipy.ndimage's Gaussian filter, truncated at 3.5 sigma
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=predictions.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel, window = kernel / kernel.sum(), 2 * radius + 1
    batch, channels, height, width = predictions.shape
    if height < window or width < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} pixels, got {height}x{width}.")
    x, y = predictions.double(), references.double()
    # The five local moments, filtered separably with 'valid' borders: exactly skimage's cropped region.
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(batch * 5 * channels, 1, height, width)
    moments = F.conv2d(F.conv2d(moments, kernel.view(1, 1, window, 1)), kernel.view(1, 1, 1, window))
    mu_x, mu_y, xx, yy, xy = moments.reshape(batch, 5, channels, *moments.shape[-2:]).unbind(1)
    var_x, var_y, cov_xy = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


class FeatureStatistics:
    """Running mean and (unbiased) covariance of (batch, dim) feature batches, in float64 sums that `reduce` adds
    up across processes."""

    def __init__(self, num_features: int | None = None):
        self.num_features = num_features
        self.count = torch.zeros((), dtype=torch.float64)
        self.feature_sum = self.outer_sum = None
        if num_features is not None:
            self.feature_sum = torch.zeros(num_features, dtype=torch.float64)
            self.outer_sum = torch.zeros(num_features, num_features, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or not torch.isfinite(features).all():
            raise ValueError(f"Features must be finite, of shape (batch, dim); got {tuple(features.shape)}.")
        features = features.detach().to(device="cpu", dtype=torch.float64)
        if self.num_features is None:
            self.__init__(features.shape[1])  # the sums take the first batch's width
        if features.shape[1] != self.num_features:
            raise ValueError(f"Got {features.shape[1]}-d features after {self.num_features}-d ones.")
        self.count += features.shape[0]
        self.feature_sum += features.sum(dim=0)
        self.outer_sum += features.T @ features

    def reduce(self, sum_fn: Callable[[torch.Tensor], torch.Tensor]) -> "FeatureStatistics":
        """The statistics over all processes, given `sum_fn` summing a tensor across them."""
        total = FeatureStatistics(self.num_features)
        total.count, total.feature_sum, total.outer_sum = (
            sum_fn(tensor.clone()) for tensor in (self.count, self.feature_sum, self.outer_sum)
        )
        return total

    @property
    def mean(self) -> torch.Tensor:
        return self.feature_sum / self.count

    @property
    def covariance(self) -> torch.Tensor:
        if self.count < 2:
            raise ValueError(f"A covariance needs at least 2 feature vectors, got {int(self.count)}.")
        return (self.outer_sum - self.count * torch.outer(self.mean, self.mean)) / (self.count - 1)


def frechet_distance(
    mean_1: torch.Tensor, covariance_1: torch.Tensor, mean_2: torch.Tensor, covariance_2: torch.Tensor
) -> float:
    """||mean_1 - mean_2||² + Tr(covariance_1 + covariance_2 - 2·(covariance_1·covariance_2)^½).

    Tr((C1·C2)^½) is taken from the eigenvalues of the symmetric C1^½·C2·C1^½, stable for the singular covariances
    of small sets; it agrees with pytorch-fid's `scipy.linalg.sqrtm` formula where that one converges."""
    mean_1, mean_2 = mean_1.double().cpu(), mean_2.double().cpu()
    covariance_1, covariance_2 = covariance_1.double().cpu(), covariance_2.double().cpu()
    if mean_1.shape != mean_2.shape:
        raise ValueError(f"Statistics of different feature sizes: {tuple(mean_1.shape)} vs {tuple(mean_2.shape)}.")
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance_1)
    sqrt_1 = (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    product = sqrt_1 @ covariance_2 @ sqrt_1
    trace_sqrt_product = torch.linalg.eigvalsh((product + product.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean_1 - mean_2).square().sum() + covariance_1.trace() + covariance_2.trace() - 2 * trace_sqrt_product
    return max(float(distance), 0.0)


def features_from_output(output: Any) -> torch.Tensor:
    """(batch, dim) features from a feature extractor's output: a tensor (flattened), a transformers output (its
    `pooler_output`, `image_embeds`, else the token mean of `last_hidden_state`) or a tuple (its first element)."""
    if isinstance(output, torch.Tensor):
        return output.flatten(1) if output.ndim > 1 else output[:, None]
    if isinstance(output, dict):  # transformers' ModelOutput is a dict
        for name in ("pooler_output", "image_embeds", "last_hidden_state"):
            value = output.get(name)
            if isinstance(value, torch.Tensor) and name == "last_hidden_state" and value.ndim == 3:
                return value.mean(dim=1)  # the token mean
            if isinstance(value, torch.Tensor):
                return features_from_output(value)
    if isinstance(output, (tuple, list)) and output:
        return features_from_output(output[0])
    raise TypeError(
        f"Cannot read features from a {type(output).__name__}: the feature extractor must return a tensor "
        "(batch, ...), a tuple starting with one, or a transformers output with `pooler_output` or "
        "`last_hidden_state`."
    )


@torch.no_grad()
def extract_features(
    feature_extractor: Callable[[torch.Tensor], Any],
    images: Sequence[torch.Tensor],
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """(N, dim) float64 CPU features of `images` ((1, C, H, W) tensors in [0, 1]), batching same-sized neighbours."""
    if not callable(feature_extractor):
        raise TypeError(
            f"`feature_extractor` must be a callable or a torch module, got {type(feature_extractor).__name__}."
        )
    dtype = torch.float32
    if isinstance(feature_extractor, torch.nn.Module):
        parameter = next(feature_extractor.eval().parameters(), None)
        device = device or (parameter.device if parameter is not None else "cpu")
        dtype = next((p.dtype for p in feature_extractor.parameters() if p.is_floating_point()), dtype)
    features = []
    for _, same_size in itertools.groupby(images, key=lambda image: image.shape):
        same_size = list(same_size)
        for start in range(0, len(same_size), batch_size):
            batch = torch.cat(same_size[start : start + batch_size]).to(device=device or "cpu", dtype=dtype)
            batch_features = features_from_output(feature_extractor(batch))
            if batch_features.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"The feature extractor returned {batch_features.shape[0]} feature vectors for {batch.shape[0]} "
                    "images."
                )
            features.append(batch_features.detach().to(device="cpu", dtype=torch.float64))
    return torch.cat(features)


def per_image_scores(
    metric: Callable[..., torch.Tensor], predictions: Sequence[Any], references: Sequence[Any], **kwargs
) -> torch.Tensor:
    """`metric` (a per-image function of (B, C, H, W) tensors) over pairs of channels-last images of any sizes."""
    if len(predictions) != len(references) or len(predictions) == 0:
        raise ValueError(f"Got {len(predictions)} predictions and {len(references)} references: pass as many, >= 1.")
    pairs = zip(images_to_tensors(predictions, "predictions"), images_to_tensors(references, "references"))
    return torch.cat([metric(prediction, reference, **kwargs) for prediction, reference in pairs])


def frechet_distance_of_features(predictions: torch.Tensor, references: torch.Tensor) -> float:
    """The Fréchet distance between the Gaussians fitted to two (N, dim) feature sets (N >= 2)."""
    statistics = [FeatureStatistics(), FeatureStatistics()]
    for name, features, statistic in zip(("predictions", "references"), (predictions, references), statistics):
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(
                f"`{name}` must give at least 2 feature vectors to fit a covariance, got shape {tuple(features.shape)}."
            )
        statistic.update(features)
    return frechet_distance(statistics[0].mean, statistics[0].covariance, statistics[1].mean, statistics[1].covariance)


def frechet_distance_of_images(
    feature_extractor: Callable[[torch.Tensor], Any],
    predictions: Sequence[Any],
    references: Sequence[Any],
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> float:
    """The Fréchet distance between the `feature_extractor` features of two sets of channels-last images."""
    return frechet_distance_of_features(
        *(extract_features(feature_extractor, images_to_tensors(images, name), batch_size, device)
          for name, images in (("predictions", predictions), ("references", references)))  # fmt: skip
    )
