# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""PSNR of reconstructed images, an `evaluate` module shipped with uniflow-hf."""

import evaluate

from uniflow_hf.metrics._common import image_pair_features, peak_signal_noise_ratio, per_image_scores


_DESCRIPTION = """\
Peak signal-to-noise ratio, 10 * log10(data_range^2 / MSE), computed per image and averaged over the images.
Images are float arrays with values in [0, data_range], data_range = 1 for images in [0, 1] (what
`UniFlowImageProcessor.postprocess(..., output_type="np")` returns). Note: the official UniFlow quick-start passes
data_range=2.0 for images in [0, 1], which adds 20 * log10(2) = 6.02 dB to every score; use 1.0 for [0, 1] images.
Agrees with `skimage.metrics.peak_signal_noise_ratio(reference, prediction, data_range=...)`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: reconstructed images, each (height, width, channels) or (height, width), values in [0, data_range].
    references: the original images, the same shapes as `predictions`.
    data_range (`float`, defaults to 1.0): the range of the pixel values (1.0 for [0, 1], 255 for 8-bit values).
Returns:
    psnr (`float`): the mean PSNR in dB (inf only if every pair is identical).
Examples:
    >>> import evaluate, numpy as np
    >>> from uniflow_hf.metrics import metric_path
    >>> psnr = evaluate.load(metric_path("psnr"))
    >>> reference = np.full((1, 8, 8, 3), 0.5)
    >>> round(psnr.compute(predictions=reference + 0.1, references=reference)["psnr"], 2)
    20.0
"""

_CITATION = """\
@article{hore2010image,
  title={Image quality metrics: PSNR vs. SSIM},
  author={Hor{\\'e}, Alain and Ziou, Djemel},
  journal={ICPR},
  year={2010}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PSNR(evaluate.Metric):
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
        scores = per_image_scores(peak_signal_noise_ratio, predictions, references, data_range=data_range)
        return {"psnr": float(scores.mean())}
