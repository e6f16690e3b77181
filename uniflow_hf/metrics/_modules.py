# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The `evaluate` modules of `uniflow_hf.metrics`; each `<name>/<name>.py` file imports its class from here."""

import datasets
import evaluate
import numpy as np
import torch

from ._common import (
    frechet_distance_of_features,
    frechet_distance_of_images,
    peak_signal_noise_ratio,
    per_image_scores,
    structural_similarity,
)
from ._inception import FID_WEIGHTS_FILENAME, FIDInceptionV3


def _image_features(ndim: int):
    feature = datasets.Value("float32")
    for _ in range(ndim):
        feature = datasets.Sequence(feature)
    return datasets.Features({"predictions": feature, "references": feature})


# Channels-last (height, width, channels) images, or (height, width) grayscale ones.
IMAGE_PAIRS = [_image_features(3), _image_features(2)]

_IMAGE_ARGUMENTS = """
Args:
    predictions: reconstructed images, each (height, width, channels) or (height, width), values in [0, data_range].
    references: the original images, the same shapes as `predictions`.
    data_range (`float`, defaults to 1.0): the range of the pixel values (1.0 for [0, 1], 255 for 8-bit values).
"""


class _UniFlowMetric(evaluate.Metric):
    """An `evaluate.Metric` whose `MetricInfo` is read from the class attributes."""

    description = citation = inputs_description = reference_url = ""
    features = IMAGE_PAIRS

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric", description=self.description, citation=self.citation, features=self.features,
            inputs_description=self.inputs_description, reference_urls=[self.reference_url],
        )


class PSNR(_UniFlowMetric):
    description = (
        "Peak signal-to-noise ratio, 10 * log10(data_range^2 / MSE), per image and averaged over the images, as "
        "`skimage.metrics.peak_signal_noise_ratio`. Use data_range=1 for images in [0, 1]."
    )
    inputs_description = _IMAGE_ARGUMENTS + "Returns:\n    psnr (`float`): the mean PSNR in dB.\n"
    reference_url = "https://scikit-image.org/docs/stable/api/skimage.metrics.html"
    per_image_score = staticmethod(peak_signal_noise_ratio)

    def _compute(self, predictions, references, data_range=1.0):
        scores = per_image_scores(self.per_image_score, predictions, references, data_range=data_range)
        return {self.name: float(scores.mean())}


class SSIM(_UniFlowMetric):
    description = (
        "Structural similarity (11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, population covariances) "
        "per image and averaged over the images, as `skimage.metrics.structural_similarity(..., channel_axis=-1, "
        "gaussian_weights=True, use_sample_covariance=False)`. Images must be at least 11x11."
    )
    inputs_description = _IMAGE_ARGUMENTS + "Returns:\n    ssim (`float`): the mean SSIM, at most 1.\n"
    citation = """\
@article{wang2004image,
  title={Image quality assessment: from error visibility to structural similarity},
  author={Wang, Zhou and Bovik, Alan C and Sheikh, Hamid R and Simoncelli, Eero P},
  journal={IEEE Transactions on Image Processing},
  volume={13},
  number={4},
  pages={600--612},
  year={2004}
}
"""
    reference_url = PSNR.reference_url
    per_image_score = staticmethod(structural_similarity)
    _compute = PSNR._compute


_FRECHET_CITATION = """\
@inproceedings{heusel2017gans,
  title={GANs trained by a two time-scale update rule converge to a local Nash equilibrium},
  author={Heusel, Martin and Ramsauer, Hubert and Unterthiner, Thomas and Nessler, Bernhard and Hochreiter, Sepp},
  booktitle={NeurIPS},
  year={2017}
}
"""


class RFID(_UniFlowMetric):
    description = (
        "Reconstruction FID: the Fréchet distance between the 2048-d Inception-v3 pool features of the "
        f"reconstructions and of the originals, with the TensorFlow FID network ({FID_WEIGHTS_FILENAME}, which you "
        "pass). Only values computed on the same number of images compare."
    )
    inputs_description = f"""
Args:
    predictions: reconstructed RGB images, each (height, width, 3), values in [0, 1].
    references: the original RGB images, (height, width, 3), values in [0, 1].
    inception_weights (`str`): path of {FID_WEIGHTS_FILENAME}.
    batch_size (`int`, defaults to 32): images per Inception forward.
    device (`str`, *optional*): where to run Inception (CPU by default).
Returns:
    rfid (`float`).
"""
    citation = _FRECHET_CITATION
    reference_url = "https://github.com/mseitzer/pytorch-fid"
    features = IMAGE_PAIRS[:1]

    def _compute(self, predictions, references, inception_weights=None, batch_size=32, device=None):
        if inception_weights is None:
            raise ValueError(f"rFID needs `inception_weights`: the path of {FID_WEIGHTS_FILENAME}.")
        key = (inception_weights, str(device))
        if getattr(self, "_inception_key", None) != key:  # loaded once per metric object
            self._inception, self._inception_key = FIDInceptionV3.from_weights_file(inception_weights, device), key
        return {"rfid": frechet_distance_of_images(self._inception, predictions, references, batch_size, device)}


class FrechetDistance(_UniFlowMetric):
    description = (
        "Fréchet distance between the Gaussians fitted to the features of two sets, from any `feature_extractor` "
        "applied to channels-last images in [0, 1], or from feature vectors passed directly."
    )
    inputs_description = """
Args:
    predictions: images (height, width, channels) in [0, 1], or feature vectors (dim,) without `feature_extractor`.
    references: the same kind of inputs as `predictions`.
    feature_extractor (callable, *optional*): maps a float (batch, channels, height, width) tensor in [0, 1] to
        (batch, ...) features: a tensor, a tuple starting with one, or a transformers output. Required for images.
    batch_size (`int`, defaults to 32): images per extractor call.
    device (`str`, *optional*): where to put the images (the module's device by default).
Returns:
    frechet_distance (`float`).
"""
    citation = _FRECHET_CITATION
    reference_url = "https://doi.org/10.1016/0047-259X(82)90077-X"
    vectors = datasets.Sequence(datasets.Value("float64"))
    features = [datasets.Features({"predictions": vectors, "references": vectors}), *IMAGE_PAIRS]

    def _compute(self, predictions, references, feature_extractor=None, batch_size=32, device=None):
        if len(predictions) == 0 or np.asarray(predictions[0]).ndim == 1:  # feature vectors
            if feature_extractor is not None:
                raise ValueError("Got feature vectors and a `feature_extractor`: pass images, or no extractor.")
            predictions, references = (torch.tensor(np.asarray(x, dtype=np.float64)) for x in (predictions, references))
            return {"frechet_distance": frechet_distance_of_features(predictions, references)}
        if feature_extractor is None:
            raise ValueError("Got images: pass a `feature_extractor` (a callable or a torch module), or features.")
        distance = frechet_distance_of_images(feature_extractor, predictions, references, batch_size, device)
        return {"frechet_distance": distance}
