# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""Fréchet distance over any feature extractor, an `evaluate` module shipped with uniflow-hf."""

import datasets
import evaluate
import numpy as np
import torch

from uniflow_hf.metrics._common import frechet_distance_of_features, frechet_distance_of_images, image_pair_features


_DESCRIPTION = """\
Fréchet distance between the Gaussians fitted to the features of two sets: ||mu_1 - mu_2||^2 +
Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)). The features come from any `feature_extractor` you pass (a callable or a torch
module, e.g. a CLIP / DINOv2 / UniFlow vision tower wrapped with its normalisation), applied to channels-last images
in [0, 1]; or pass feature vectors directly and no extractor. With the FID Inception as extractor this is FID (see
the `rfid` module).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: images (height, width, channels) in [0, 1], or feature vectors (dim,) without `feature_extractor`.
    references: the same kind of inputs as `predictions`.
    feature_extractor (callable, *optional*): gets a float32 (batch, channels, height, width) tensor in [0, 1] and
        returns (batch, ...) features: a tensor, a tuple starting with one, or a transformers output (its
        `pooler_output`, else the token mean of its `last_hidden_state`). Required for images.
    batch_size (`int`, defaults to 32): images per extractor call.
    device (`str`, *optional*): where to put the images (the module's device by default).
Returns:
    frechet_distance (`float`).
Examples:
    >>> import evaluate, torch
    >>> from uniflow_hf.metrics import metric_path
    >>> fd = evaluate.load(metric_path("frechet_distance"))
    >>> features = torch.randn(64, 8)
    >>> fd.compute(predictions=features, references=features)["frechet_distance"] < 1e-9
    True
"""

_CITATION = """\
@article{dowson1982frechet,
  title={The Fr{\\'e}chet distance between multivariate normal distributions},
  author={Dowson, D. C. and Landau, B. V.},
  journal={Journal of Multivariate Analysis},
  volume={12},
  number={3},
  pages={450--455},
  year={1982}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FrechetDistance(evaluate.Metric):
    def _info(self):
        vectors = datasets.Sequence(datasets.Value("float64"))
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[datasets.Features({"predictions": vectors, "references": vectors}), *image_pair_features()],
            reference_urls=["https://doi.org/10.1016/0047-259X(82)90077-X"],
        )

    def _compute(self, predictions, references, feature_extractor=None, batch_size=32, device=None):
        is_vectors = np.asarray(predictions[0]).ndim == 1 if len(predictions) else True
        if is_vectors:
            if feature_extractor is not None:
                raise ValueError("Got feature vectors and a `feature_extractor`: pass images, or no extractor.")
            return {
                "frechet_distance": frechet_distance_of_features(
                    torch.tensor(np.asarray(predictions, dtype=np.float64)),
                    torch.tensor(np.asarray(references, dtype=np.float64)),
                )
            }
        if feature_extractor is None:
            raise ValueError(
                "Got images: pass a `feature_extractor` (a callable or a torch module), or feature vectors."
            )
        distance = frechet_distance_of_images(feature_extractor, predictions, references, batch_size, device)
        return {"frechet_distance": distance}
