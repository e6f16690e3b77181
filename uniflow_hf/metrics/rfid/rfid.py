# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""rFID (reconstruction FID) of reconstructed images, an `evaluate` module shipped with uniflow-hf."""

import evaluate

from uniflow_hf.metrics._common import frechet_distance_of_images, image_pair_features
from uniflow_hf.metrics._inception import FID_WEIGHTS_FILENAME, FIDInceptionV3


_DESCRIPTION = f"""\
Reconstruction FID: the Fréchet distance between the Inception-v3 pool features (2048-d) of the reconstructions and
those of the originals, with the network of the TensorFlow FID (the weights file {FID_WEIGHTS_FILENAME} of
pytorch-fid, which you pass: nothing is downloaded). Images are resized bilinearly to 299x299 as pytorch-fid does.
Papers report rFID on 50,000 ImageNet validation images; on fewer than ~2,048 images the covariances are
rank-deficient and the value is biased upwards, so compare only values computed on the same number of images.
"""

_KWARGS_DESCRIPTION = f"""
Args:
    predictions: reconstructed RGB images, each (height, width, 3), values in [0, 1].
    references: the original RGB images, (height, width, 3), values in [0, 1].
    inception_weights (`str`): path of {FID_WEIGHTS_FILENAME} (read with `torch.load(weights_only=True)`).
    batch_size (`int`, defaults to 32): images per Inception forward.
    device (`str`, *optional*): where to run Inception (CPU by default).
Returns:
    rfid (`float`): the Fréchet distance (0 for identical sets).
Examples:
    >>> import evaluate
    >>> from uniflow_hf.metrics import metric_path
    >>> rfid = evaluate.load(metric_path("rfid"))
    >>> rfid.compute(predictions=reconstructions, references=originals, inception_weights="{FID_WEIGHTS_FILENAME}")
"""

_CITATION = """\
@inproceedings{heusel2017gans,
  title={GANs trained by a two time-scale update rule converge to a local Nash equilibrium},
  author={Heusel, Martin and Ramsauer, Hubert and Unterthiner, Thomas and Nessler, Bernhard and Hochreiter, Sepp},
  booktitle={NeurIPS},
  year={2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RFID(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=image_pair_features(grayscale=False),
            reference_urls=["https://github.com/mseitzer/pytorch-fid"],
        )

    def _inception(self, inception_weights, device):
        """The Inception of `inception_weights`, loaded once per metric object."""
        cached = getattr(self, "_cached_inception", None)
        if cached is None or cached[0] != (inception_weights, str(device)):
            if inception_weights is None:
                raise ValueError(
                    f"rFID needs `inception_weights`: the path of the FID Inception weights {FID_WEIGHTS_FILENAME}."
                )
            cached = ((inception_weights, str(device)), FIDInceptionV3.from_weights_file(inception_weights, device))
            self._cached_inception = cached
        return cached[1]

    def _compute(self, predictions, references, inception_weights=None, batch_size=32, device=None):
        inception = self._inception(inception_weights, device)
        return {"rfid": frechet_distance_of_images(inception, predictions, references, batch_size, device)}
