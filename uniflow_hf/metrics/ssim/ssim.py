# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""SSIM of reconstructed images, an `evaluate` module shipped with uniflow-hf."""

import evaluate

from uniflow_hf.metrics._common import image_pair_features, per_image_scores, structural_similarity


_DESCRIPTION = """\
Structural similarity (Wang et al. 2004) with the standard settings: an 11x11 Gaussian window of sigma 1.5,
K1 = 0.01, K2 = 0.03, population covariances, averaged over the channels and over the pixels whose window lies
inside the image; computed per image and averaged over the images. Images are float arrays with values in
[0, data_range], data_range = 1 for images in [0, 1]. Note: the official UniFlow quick-start passes data_range=2.0
for images in [0, 1], which shrinks the stabilising constants C1, C2 and so changes the score; use 1.0.
Agrees with `skimage.metrics.structural_similarity(reference, prediction, data_range=..., channel_axis=-1,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`. Images must be at least 11x11.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: reconstructed images, each (height, width, channels) or (height, width), values in [0, data_range].
    references: the original images, the same shapes as `predictions`.
    data_range (`float`, defaults to 1.0): the range of the pixel values (1.0 for [0, 1], 255 for 8-bit values).
Returns:
    ssim (`float`): the mean SSIM, at most 1 (identical images).
Examples:
    >>> import evaluate, numpy as np
    >>> from uniflow_hf.metrics import metric_path
    >>> ssim = evaluate.load(metric_path("ssim"))
    >>> image = np.random.default_rng(0).random((1, 16, 16, 3))
    >>> ssim.compute(predictions=image, references=image)["ssim"]
    1.0
"""

_CITATION = """\
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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SSIM(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=image_pair_features(),
            reference_urls=["https://scikit-image.org/docs/stable/api/skimage.metrics.html"],
        )

    def _compute(self, predictions, references, data_range=1.0):
        scores = per_image_scores(structural_similarity, predictions, references, data_range=data_range)
        return {"ssim": float(scores.mean())}
