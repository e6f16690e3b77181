"""The metric modules against scikit-image / numpy / scipy references, loaded offline through `evaluate`."""

import os

import evaluate
import numpy as np
import pytest
import scipy.linalg
import skimage.data
import torch
from skimage.metrics import peak_signal_noise_ratio as skimage_psnr
from skimage.metrics import structural_similarity as skimage_ssim
from skimage.transform import resize

from uniflow_hf.metrics import (
    METRIC_NAMES,
    FeatureStatistics,
    FIDInceptionV3,
    frechet_distance,
    metric_path,
    peak_signal_noise_ratio,
    structural_similarity,
)


def photo(name: str, size=(48, 40)) -> np.ndarray:
    """A real photograph from scikit-image's bundled data, resized, float64 in [0, 1], (H, W, 3)."""
    return resize(getattr(skimage.data, name)(), size, anti_aliasing=True).astype(np.float64)


@pytest.fixture(scope="module")
def image_pairs():
    """Originals and degraded versions (noise, blur-like shift, contrast change), channels-last in [0, 1]."""
    rng = np.random.default_rng(0)
    references = np.stack([photo("astronaut"), photo("chelsea"), photo("coffee")])
    predictions = np.stack(
        [
            np.clip(references[0] + 0.05 * rng.standard_normal(references[0].shape), 0, 1),
            np.roll(references[1], 1, axis=1),
            0.8 * references[2] + 0.1,
        ]
    )
    return predictions, references


def skimage_ssim_reference(prediction, reference, data_range=1.0):
    channel_axis = -1 if prediction.ndim == 3 else None
    return skimage_ssim(
        reference, prediction, data_range=data_range, channel_axis=channel_axis, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )


def to_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def kaiming_inception() -> FIDInceptionV3:
    """A random FID Inception whose features still tell images apart (variance-preserving conv init)."""
    torch.manual_seed(0)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    return model.eval()


# ------------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("name", METRIC_NAMES)
def test_metric_path_points_inside_the_package_and_loads_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = metric_path(name)
    assert os.path.isfile(os.path.join(path, f"{name}.py"))
    assert os.path.dirname(path) == os.path.dirname(os.path.abspath(__import__("uniflow_hf.metrics").metrics.__file__))
    assert isinstance(evaluate.load(path), evaluate.Metric)


def test_metric_path_rejects_unknown_names():
    with pytest.raises(ValueError, match="psnr"):
        metric_path("lpips")


# --------------------------------------------------------------------------------------------- PSNR, SSIM
def test_psnr_matches_skimage(image_pairs):
    predictions, references = image_pairs
    expected = [skimage_psnr(r, p, data_range=1.0) for p, r in zip(predictions, references)]
    per_image = peak_signal_noise_ratio(to_batch(predictions), to_batch(references))
    np.testing.assert_allclose(per_image.numpy(), expected, rtol=1e-12)
    # Through `evaluate` the images are stored as float32: compare with skimage on the same values.
    stored = [(p.astype(np.float32).astype(np.float64), r.astype(np.float32).astype(np.float64))
              for p, r in zip(predictions, references)]  # fmt: skip
    result = evaluate.load(metric_path("psnr")).compute(predictions=predictions, references=references)
    assert result["psnr"] == pytest.approx(np.mean([skimage_psnr(r, p, data_range=1.0) for p, r in stored]), rel=1e-9)


def test_ssim_matches_skimage_color_gray_and_8bit_range(image_pairs):
    predictions, references = image_pairs
    expected = [skimage_ssim_reference(p, r) for p, r in zip(predictions, references)]
    per_image = structural_similarity(to_batch(predictions), to_batch(references))
    np.testing.assert_allclose(per_image.numpy(), expected, rtol=1e-10)

    gray_predictions, gray_references = predictions.mean(-1), references.mean(-1)
    result = evaluate.load(metric_path("ssim")).compute(predictions=gray_predictions, references=gray_references)
    stored = [(p.astype(np.float32).astype(np.float64), r.astype(np.float32).astype(np.float64))
              for p, r in zip(gray_predictions, gray_references)]  # fmt: skip
    assert result["ssim"] == pytest.approx(np.mean([skimage_ssim_reference(p, r) for p, r in stored]), rel=1e-9)

    scaled = structural_similarity(to_batch(predictions * 255), to_batch(references * 255), data_range=255)
    expected_255 = [skimage_ssim_reference(p * 255, r * 255, data_range=255) for p, r in zip(predictions, references)]
    np.testing.assert_allclose(scaled.numpy(), expected_255, rtol=1e-10)


def test_images_of_different_sizes_in_one_evaluate_call(image_pairs):
    predictions, references = image_pairs
    small_p, small_r = predictions[0][:20, :24], references[0][:20, :24]
    result = evaluate.load(metric_path("psnr")).compute(
        predictions=[predictions[1], small_p], references=[references[1], small_r]
    )
    expected = np.mean(
        [skimage_psnr(r.astype(np.float32), p.astype(np.float32), data_range=1.0)
         for p, r in ((predictions[1], references[1]), (small_p, small_r))]  # fmt: skip
    )
    assert result["psnr"] == pytest.approx(expected, rel=1e-6)


def test_data_range_two_on_unit_images_inflates_psnr_by_6_db(image_pairs):
    """The official quick-start's data_range=2.0 on images in [0, 1]: +20·log10(2) dB on every image."""
    predictions, references = (to_batch(x) for x in image_pairs)
    unit, two = (peak_signal_noise_ratio(predictions, references, data_range) for data_range in (1.0, 2.0))
    np.testing.assert_allclose((two - unit).numpy(), 20 * np.log10(2.0), rtol=1e-12)


def test_identical_images_score_perfectly(image_pairs):
    references = to_batch(image_pairs[1])
    assert torch.isinf(peak_signal_noise_ratio(references, references.clone())).all()
    assert torch.allclose(structural_similarity(references, references.clone()), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "predictions, error, match",
    [
        (lambda x: x * 4.4 - 2.1, ValueError, "postprocess"),  # normalised pixel_values, not [0, 1] images
        (lambda x: (x * 255).to(torch.uint8), TypeError, "floating-point"),
        (lambda x: x.masked_fill(x > 0.9, float("nan")), ValueError, "NaN"),
        (lambda x: x[:, :, :30], ValueError, "same shape"),
        (lambda x: x[0], ValueError, r"\(batch, channels, height, width\)"),
    ],
)
def test_bad_images_are_rejected(image_pairs, predictions, error, match):
    references = to_batch(image_pairs[1])
    for metric in (peak_signal_noise_ratio, structural_similarity):
        with pytest.raises(error, match=match):
            metric(predictions(references.clone()), references)


def test_ssim_rejects_images_smaller_than_its_window():
    tiny = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="11x11"):
        structural_similarity(tiny, tiny)


# ------------------------------------------------------------------------------------------- Fréchet distance
def pytorch_fid_reference(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's `calculate_frechet_distance` (scipy.linalg.sqrtm)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real)


def test_frechet_distance_matches_the_scipy_formula():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12))
    b = 0.7 * rng.standard_normal((150, 12)) @ rng.standard_normal((12, 12)) + 0.3
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    expected = pytorch_fid_reference(*stats[0], *stats[1])
    actual = frechet_distance(*(torch.from_numpy(v) for v in (*stats[0], *stats[1])))
    assert actual == pytest.approx(expected, rel=1e-8)


def test_feature_statistics_accumulate_like_numpy_and_reduce_across_shards():
    rng = np.random.default_rng(1)
    features = torch.from_numpy(rng.standard_normal((50, 6)))
    whole, shards = FeatureStatistics(), [FeatureStatistics(6), FeatureStatistics(6)]
    for batch in features.split(7):
        whole.update(batch)
    shards[0].update(features[:20])
    shards[1].update(features[20:])
    # `reduce` takes a cross-process sum: emulate two processes by adding the second shard's tensor of each shape.
    partner = {tuple(t.shape): t for t in (shards[1].count, shards[1].feature_sum, shards[1].outer_sum)}
    merged = shards[0].reduce(lambda tensor: tensor + partner[tuple(tensor.shape)])
    for stats in (whole, merged):
        np.testing.assert_allclose(stats.mean.numpy(), features.numpy().mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats.covariance.numpy(), np.cov(features.numpy(), rowvar=False), rtol=1e-10)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_rank_deficient():
    fd = evaluate.load(metric_path("frechet_distance"))
    features = torch.randn(10, 32, generator=torch.Generator().manual_seed(0))  # 10 samples < 32 dims
    assert fd.compute(predictions=features, references=features)["frechet_distance"] == pytest.approx(0, abs=1e-8)
    shift = torch.linspace(0, 1, 32)
    result = fd.compute(predictions=features, references=features + shift)["frechet_distance"]
    assert result == pytest.approx(float(shift.square().sum()), rel=1e-6)


def test_frechet_distance_over_any_feature_extractor(image_pairs):
    predictions, references = image_pairs
    fd = evaluate.load(metric_path("frechet_distance"))
    channel_means = lambda images: images.mean(dim=(2, 3))  # noqa: E731
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(2)).double()
    for extractor in (channel_means, module):
        same = fd.compute(predictions=references, references=references, feature_extractor=extractor)
        different = fd.compute(predictions=predictions, references=references, feature_extractor=extractor)
        assert same["frechet_distance"] == pytest.approx(0, abs=1e-9)
        assert different["frechet_distance"] > 1e-6
    # The callable's features, fed in directly, give the same distance.
    to_features = lambda x: channel_means(to_batch(x.astype(np.float32).astype(np.float64)))  # noqa: E731
    direct = fd.compute(predictions=to_features(predictions), references=to_features(references))
    via_extractor = fd.compute(predictions=predictions, references=references, feature_extractor=channel_means)
    assert direct["frechet_distance"] == pytest.approx(via_extractor["frechet_distance"], rel=1e-6)


def test_frechet_distance_needs_an_extractor_for_images(image_pairs):
    with pytest.raises(ValueError, match="feature_extractor"):
        evaluate.load(metric_path("frechet_distance")).compute(predictions=image_pairs[0], references=image_pairs[1])


# ------------------------------------------------------------------------------------------------------ rFID
@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(kaiming_inception().state_dict(), path)
    return path


def test_rfid_with_a_weights_file(inception_file, image_pairs):
    predictions, references = image_pairs
    rfid = evaluate.load(metric_path("rfid"))
    same = rfid.compute(predictions=references, references=references, inception_weights=str(inception_file))
    different = rfid.compute(predictions=predictions, references=references, inception_weights=str(inception_file))
    assert same["rfid"] == pytest.approx(0, abs=1e-6)
    assert different["rfid"] > 1e-3


def test_inception_features_and_input_size():
    inception = kaiming_inception()
    features = inception(torch.rand(2, 3, 37, 53))
    assert features.shape == (2, FIDInceptionV3.num_features)
    with pytest.raises(ValueError, match="RGB"):
        inception(torch.rand(2, 1, 64, 64))
