"""Write `benchmarks/fmnist_report.md`: what the shipped UniFlow-FMNIST reaches, measured from its weights.

    python benchmarks/fmnist_report.py [--model uniflow_hf/models/uniflow-fmnist] [--teacher DIR]
        [--ablations DIR ...] [--num-generated 10000] [--output benchmarks/fmnist_report.md]

- reconstruction PSNR / SSIM (data range 1, 1 Euler step) on the 10k test images;
- linear-probe accuracy of the encoder features (mean token of the last layer) for the teacher (the pretrained
  encoder) and for UniFlow's adapted encoder;
- generated samples: class accuracy judged by an independently trained CNN (not the pretraining encoder), and the
  Fréchet distance on that CNN's features against the test set, next to the train-vs-test distance as the floor
  and the tokenizer's bound (the floor's training images reconstructed as the generation decodes: its decoder
  steps, its latent scale);
- the same at other guidance settings (`--compare-guidance`; by default the guidance of 1.5 over the whole
  trajectory), with the same seeds;
- the headline setting on more noise seeds (`--noise-seeds 0 1 2`) and the mean over them;
- the test set's reconstructions with 1 decoder step and with the generation's decoder steps (PSNR and Fréchet
  distance), which shows what the decoder's steps trade;
- a linear reference: PCA of the training images with as many components as the latent holds numbers (its
  reconstruction PSNR / SSIM, and the linear probe on its coefficients);
- optionally, ablation rows (frozen encoder / no distillation / uniform / adaptive β = 2 at the same budget).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
NUM_FLOOR = 10000  # training images of the floor (train vs test) and of the tokenizer's bound


@torch.no_grad()
def generate_all(
    pipeline, per_class: int, guidance_scale: float, steps: int, decoder_steps: int | None = None,
    batch_size: int = 500, seed: int = 0, guidance_interval: tuple[float, float] | None = None,
    autoguidance_scale: float | None = None, autoguidance_interval: tuple[float, float] | None = None,
    guidance_rescale: float | None = None, noise_scale: float = 1.0, decoder_latent_scale: float | None = None,
):
    """`per_class` samples of each class; `noise_scale` scales the latent flow's starting noise (a temperature)."""
    images, labels = [], []
    generator = torch.Generator().manual_seed(seed)
    for class_id in range(10):
        for start in range(0, per_class, batch_size):
            n = min(batch_size, per_class - start)
            # the pipeline's own draw, scaled; the generator goes on to draw the decoder's noise as it would
            latents = None if noise_scale == 1 else noise_scale * pipeline.prepare_latents(n, generator)
            out = pipeline([class_id] * n, guidance_scale=guidance_scale, guidance_interval=guidance_interval,
                           autoguidance_scale=autoguidance_scale, autoguidance_interval=autoguidance_interval,
                           guidance_rescale=guidance_rescale, decoder_latent_scale=decoder_latent_scale,
                           num_inference_steps=steps, latents=latents,
                           decoder_num_inference_steps=decoder_steps, generator=generator, output_type="pt").images
            images.append(out.mean(dim=1))
            labels += [class_id] * n
    return torch.cat(images), torch.tensor(labels)


def bound_reconstructions(
    tokenizer, train_pixel_values: torch.Tensor, decoder_steps: int, latent_scale: float = 1.0
) -> torch.Tensor:
    """The tokenizer's bound: a generator that drew exactly the latents of the floor's training images would reach
    the distance of their reconstructions, decoded as the generation decodes (`decoder_steps`, the latents times
    `latent_scale`; grayscale, in [0, 1])."""
    from uniflow_hf.recipes.fmnist import reconstruct_grayscale

    return reconstruct_grayscale(
        tokenizer, train_pixel_values[:NUM_FLOOR], batch_size=1000, num_inference_steps=decoder_steps,
        latent_scale=latent_scale,
    )


def reconstruction_metrics(tokenizer, pixel_values: torch.Tensor, batch_size: int = 500, seed: int = 0) -> dict:
    """PSNR and SSIM (data range 1, Gaussian-window SSIM of `uniflow_hf.metrics`) on the [0, 1] grayscale images of
    `tokenizer.reconstruct` over `pixel_values`."""
    from uniflow_hf.metrics import peak_signal_noise_ratio, structural_similarity
    from uniflow_hf.recipes.fmnist import reconstruct_grayscale, to_unit_range

    reconstruction = reconstruct_grayscale(tokenizer, pixel_values, batch_size, seed)[:, None]
    reference = to_unit_range(pixel_values)[:, None]
    return {
        "psnr": peak_signal_noise_ratio(reconstruction, reference, data_range=1.0).mean().item(),
        "ssim": structural_similarity(reconstruction, reference, data_range=1.0).mean().item(),
    }


@torch.no_grad()
def encoder_features(vision_model, pixel_values: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Mean of the last layer's tokens (CLS and patches): the features a linear probe sees."""
    vision_model.eval()
    chunks = [
        vision_model(pixel_values[s : s + batch_size], return_dict=True).last_hidden_state.mean(dim=1)
        for s in range(0, len(pixel_values), batch_size)
    ]
    return torch.cat(chunks)


def linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs: int = 30, seed: int = 0) -> float:
    """Accuracy of a linear classifier (standardised features, AdamW, full passes) trained on frozen features."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = torch.nn.Linear(train_x.shape[1], int(train_y.max()) + 1)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        for index in torch.randperm(len(train_x)).split(1024):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(probe(train_x[index]), train_y[index]).backward()
            optimizer.step()
    with torch.no_grad():
        return (probe(test_x).argmax(-1) == test_y).float().mean().item()



class JudgeCNN(torch.nn.Module):
    """A small CNN classifier of Fashion-MNIST, independent of UniFlow: the judge of generated samples."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64 * 7 * 7, 128), torch.nn.ReLU(),
        )
        self.classifier = torch.nn.Linear(128, 10)

    def forward(self, x):
        return self.classifier(self.features(x))


def train_judge(images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, seed: int = 0) -> JudgeCNN:
    """`images` (N, 28, 28) in [0, 1]."""
    torch.manual_seed(seed)
    judge = JudgeCNN()
    optimizer = torch.optim.Adam(judge.parameters(), lr=1e-3)
    for _ in range(epochs):
        for index in torch.randperm(len(images)).split(128):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(judge(images[index, None]), labels[index]).backward()
            optimizer.step()
    return judge.eval()


@torch.no_grad()
def judge_outputs(judge: JudgeCNN, images: torch.Tensor, batch_size: int = 1000):
    features = torch.cat([judge.features(images[s : s + batch_size, None]) for s in range(0, len(images), batch_size)])
    return features, judge.classifier(features).argmax(-1)


def tokenizer_rows(tokenizer, train_pv, train_y, test_pv, test_y, num_recon: int):
    metrics = reconstruction_metrics(tokenizer, test_pv[:num_recon])
    features = [encoder_features(tokenizer.vision_model, pv) for pv in (train_pv, test_pv)]
    metrics["probe"] = linear_probe_accuracy(features[0], train_y, features[1], test_y)
    metrics["flow_timesteps"] = [
        tokenizer.config.flow_timestep_distribution,
        tokenizer.config.flow_timestep_logit_mean,
        tokenizer.config.flow_timestep_logit_std,
    ]
    return metrics


def describe_flow_timesteps(distribution: str, logit_mean: float, logit_std: float) -> str:
    """A tokenizer config's training-time distribution of the flow loss (`flow_timestep_*`), in words."""
    if distribution == "uniform":
        return "uniform flow times"
    logit_normal = f"logit-normal flow times (mean {logit_mean:g}, std {logit_std:g})"
    if distribution == "fat_lognormal":
        return f"the release's mix of {logit_normal} and uniform ones"
    return logit_normal


def pca_reference_row(train_unit, train_y, test_unit, test_y, num_components: int) -> dict:
    """PCA of the training images, keeping `num_components` numbers per image (the latent's count): the best any
    linear code of that size reconstructs, and the linear probe on its coefficients."""
    from uniflow_hf.metrics import peak_signal_noise_ratio, structural_similarity

    train, test = train_unit.flatten(1).double(), test_unit.flatten(1).double()
    mean = train.mean(0)
    components = torch.linalg.svd(train - mean, full_matrices=False).Vh[:num_components]
    codes = [((x - mean) @ components.T).float() for x in (train, test)]
    reconstruction = (codes[1].double() @ components + mean).clamp(0, 1).float().reshape(test_unit.shape)[:, None]
    reference = test_unit[:, None]
    return {
        "psnr": peak_signal_noise_ratio(reconstruction, reference, data_range=1.0).mean().item(),
        "ssim": structural_similarity(reconstruction, reference, data_range=1.0).mean().item(),
        "probe": linear_probe_accuracy(codes[0], train_y, codes[1], test_y),
    }


# where a report's ablation rows came from, when it kept them from an older report (`earlier_ablation_rows`)
ABLATION_PROVENANCE = ("ablation_rows_from", "ablation_teacher_probe")
TOKENIZER_ROWS = ("teacher_probe", "teacher_classifier_accuracy", "tokenizers", "pca_reference", *ABLATION_PROVENANCE)


def tokenizer_fingerprint(model_dir: str) -> str:
    """SHA-256 of the pipeline's tokenizer weights (its safetensors files, in name order)."""
    digest = hashlib.sha256()
    for path in sorted((Path(model_dir) / "tokenizer").glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def earlier_tokenizer_rows(json_path: str, fingerprint: str) -> dict:
    """The judge-free tokenizer rows of an earlier report, which must have measured these very tokenizer weights."""
    earlier = json.loads(Path(json_path).read_text())
    if earlier.get("tokenizer_sha256") != fingerprint:
        raise SystemExit(
            f"{json_path} measured other tokenizer weights (sha256 {earlier.get('tokenizer_sha256')}, these are "
            f"{fingerprint}): measure the tokenizer rows anew (leave out --tokenizer-rows-from)."
        )
    return {"tokenizer_rows_reused": True, **{key: earlier[key] for key in TOKENIZER_ROWS if key in earlier}}


def ablation_rows(tokenizers: dict) -> dict:
    """A report's tokenizer rows after the first (the shipped tokenizer): the ablations."""
    return dict(list(tokenizers.items())[1:])


def earlier_ablation_rows(json_path: str) -> dict:
    """The ablation rows of an earlier report (its tokenizer rows after the first, the shipped one), with the probe of
    the teacher they distilled against: to keep them when the shipped tokenizer is trained further."""
    earlier = json.loads(Path(json_path).read_text())
    rows = ablation_rows(earlier.get("tokenizers", {}))
    if not rows:
        raise SystemExit(f"{json_path} has no ablation rows (tokenizer rows after the shipped one) to take.")
    return {
        "ablation_rows_from": Path(json_path).name,
        # a report that itself kept older rows recorded their teacher; otherwise they distilled against its own
        "ablation_teacher_probe": earlier.get("ablation_teacher_probe", earlier.get("teacher_probe")),
        "ablation_rows": rows,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "uniflow_hf" / "models" / "uniflow-fmnist"))
    parser.add_argument("--teacher", default=None, help="the pretrained encoder folder (UniFlowForImageClassification)")
    parser.add_argument("--ablations", nargs="*", default=[], help="NAME=DIR tokenizer folders of the ablation runs")
    parser.add_argument("--num-generated", type=int, default=10000)
    parser.add_argument("--num-recon", type=int, default=10000)
    parser.add_argument("--guidance-scale", type=float, default=None, help="(default: the pipeline's)")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("T_START", "T_END"),
                        help="(default: the pipeline's)")
    parser.add_argument("--guidance-rescale", type=float, default=None, help="(default: the pipeline's)")
    parser.add_argument("--decoder-latent-scale", type=float, default=None, help="(default: the pipeline's)")
    parser.add_argument("--autoguidance-scale", type=float, default=None, help="(default: the pipeline's)")
    parser.add_argument("--autoguidance-interval", type=float, nargs=2, default=None, metavar=("T_START", "T_END"),
                        help="(default: the pipeline's)")
    parser.add_argument("--compare-guidance", nargs="*", default=["1.5:0:1"],
                        metavar="SCALE:T_START:T_END[/RESCALE][@SCALE:T_START:T_END][xLATENT_SCALE]",
                        help="also generate with these guidance settings, after a / the guidance rescale (none "
                        "without it), after an @ the autoguidance (none without it), after an x the decoder's latent "
                        "scale (1 without it; default: guidance 1.5 over the whole trajectory)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--noise-seeds", type=int, nargs="+", default=[0],
                        help="noise seeds of the headline setting's samples (their mean is reported too); the first "
                        "seeds the headline row and every --compare-guidance row")
    parser.add_argument("--decoder-steps", type=int, default=None, help="decoder steps when generating (the pipeline's)")
    parser.add_argument("--compare-decoder-steps", type=int, nargs="*", default=[],
                        help="more decoder step counts for the reconstruction table (1 and the generation's are always in)")
    add_output_arguments(parser, "fmnist_report")
    parser.add_argument(
        "--tokenizer-rows-from", default=None, metavar="JSON",
        help="take the tokenizer table (PSNR, SSIM, probes, ablations, PCA; nothing judged by the CNN) from this "
        "earlier --json of the same tokenizer weights and measure the rest anew, e.g. after training a new generator",
    )
    parser.add_argument(
        "--ablation-rows-from", default=None, metavar="JSON",
        help="take the ablation rows from this earlier --json and measure the shipped tokenizer, the teacher and the "
        "rest anew, e.g. after training the shipped tokenizer further (instead of --ablations)",
    )
    args = parser.parse_args()
    if args.ablation_rows_from and (args.ablations or args.tokenizer_rows_from):
        parser.error("--ablation-rows-from replaces --ablations and cannot be combined with --tokenizer-rows-from")
    # read before anything is measured, so that a wrong file fails at once
    earlier_ablations = earlier_ablation_rows(args.ablation_rows_from) if args.ablation_rows_from else None
    if rerendered(args, render):
        return
    torch.set_num_threads(2)

    import uniflow_hf  # noqa: F401
    from uniflow_hf import UniFlowClassConditionalPipeline
    from uniflow_hf.recipes.fmnist import (
        FASHION_MNIST_LABELS, fmnist_pixel_values, load_fashion_mnist_arrays, reconstruct_grayscale, to_unit_range,
    )
    from uniflow_hf.metrics import peak_signal_noise_ratio
    from uniflow_hf.metrics._common import frechet_distance_of_features
    from uniflow_hf.modeling import UniFlowForImageClassification, UniFlowModel

    started = time.time()
    train_x, train_y = load_fashion_mnist_arrays("train")
    test_x, test_y = load_fashion_mnist_arrays("test")
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)
    train_pv, test_pv = fmnist_pixel_values(train_x), fmnist_pixel_values(test_x)
    train_unit, test_unit = torch.from_numpy(train_x).float() / 255, torch.from_numpy(test_x).float() / 255

    pipeline = UniFlowClassConditionalPipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    tokenizer = pipeline.tokenizer.eval()
    results = {"model": args.model}

    results["tokenizer_sha256"] = tokenizer_fingerprint(args.model)
    if args.tokenizer_rows_from:
        results.update(earlier_tokenizer_rows(args.tokenizer_rows_from, results["tokenizer_sha256"]))
    else:
        rows = {"UniFlow-FMNIST (shipped)": tokenizer_rows(tokenizer, train_pv, train_y, test_pv, test_y, args.num_recon)}
        if args.teacher:
            classifier = UniFlowForImageClassification.from_pretrained(args.teacher)
            features = [encoder_features(classifier.vision_model, pv) for pv in (train_pv, test_pv)]
            results["teacher_probe"] = linear_probe_accuracy(features[0], train_y, features[1], test_y)
            results["teacher_classifier_accuracy"] = getattr(classifier.config, "test_accuracy", None)
        if earlier_ablations:
            rows.update(earlier_ablations.pop("ablation_rows"))
            results.update(earlier_ablations)
        for spec in args.ablations:
            name, folder = spec.rsplit("=", 1)  # names may hold "=" (β=2), folders do not
            ablation = UniFlowModel.from_pretrained(folder).eval()
            rows[name] = tokenizer_rows(ablation, train_pv, train_y, test_pv, test_y, args.num_recon)
        results["tokenizers"] = rows
        latent_numbers = tokenizer.config.latent_channels * tokenizer.config.grid_size**2
        results["pca_reference"] = {
            "num_components": latent_numbers,
            **pca_reference_row(train_unit, train_y, test_unit[: args.num_recon], test_y[: args.num_recon], latent_numbers),
        }

    judge = train_judge(train_unit, train_y)
    train_features, _ = judge_outputs(judge, train_unit[:NUM_FLOOR])
    test_features, test_pred = judge_outputs(judge, test_unit)
    results["judge_test_accuracy"] = (test_pred == test_y).float().mean().item()
    results["fd_floor_train_vs_test"] = frechet_distance_of_features(train_features, test_features)
    guidance = pipeline.sampling_setting("guidance_scale", args.guidance_scale)
    interval = pipeline.sampling_setting("guidance_interval", args.guidance_interval)
    rescale = pipeline.sampling_setting("guidance_rescale", args.guidance_rescale)
    autoguidance = pipeline.sampling_setting("autoguidance_scale", args.autoguidance_scale)
    autoguidance_interval = pipeline.sampling_setting("autoguidance_interval", args.autoguidance_interval)
    latent_scale = pipeline.sampling_setting("decoder_latent_scale", args.decoder_latent_scale)
    steps = 25 if args.steps is None else args.steps
    decoder_steps = pipeline.sampling_setting("decoder_num_inference_steps", args.decoder_steps)
    # The test set's own reconstructions below are no such bound: they are compared with themselves.
    results["fd_tokenizer_bound"] = frechet_distance_of_features(
        judge_outputs(judge, bound_reconstructions(tokenizer, train_pv, decoder_steps, latent_scale))[0], test_features
    )
    results["reconstruction_by_decoder_steps"] = {}
    for num_steps in sorted({1, decoder_steps, *args.compare_decoder_steps}):
        reconstructions = reconstruct_grayscale(tokenizer, test_pv, batch_size=1000, num_inference_steps=num_steps)
        psnr = peak_signal_noise_ratio(reconstructions[:, None], to_unit_range(test_pv)[:, None], data_range=1.0)
        results["reconstruction_by_decoder_steps"][num_steps] = {
            "psnr": psnr.mean().item(),
            "fd_vs_test": frechet_distance_of_features(judge_outputs(judge, reconstructions)[0], test_features),
        }

    def generation_metrics(
        guidance_scale, guidance_interval, guidance_rescale, autoguidance_scale, autoguidance_interval,
        decoder_latent_scale, seed=args.noise_seeds[0],
    ):
        generated, generated_labels = generate_all(
            pipeline, args.num_generated // 10, guidance_scale, steps, decoder_steps, guidance_interval=guidance_interval,
            autoguidance_scale=autoguidance_scale, autoguidance_interval=autoguidance_interval,
            guidance_rescale=guidance_rescale, decoder_latent_scale=decoder_latent_scale, seed=seed,
        )
        features, predictions = judge_outputs(judge, generated)
        return generated_labels, predictions, {
            "guidance_scale": guidance_scale,
            "guidance_interval": list(guidance_interval),
            "guidance_rescale": guidance_rescale,
            "autoguidance_scale": autoguidance_scale,
            "autoguidance_interval": list(autoguidance_interval),
            "decoder_latent_scale": decoder_latent_scale,
            "class_accuracy": (predictions == generated_labels).float().mean().item(),
            "fd_vs_test": frechet_distance_of_features(features, test_features),
        }

    default_setting = (guidance, list(interval), rescale, autoguidance, list(autoguidance_interval), latent_scale)
    generated_labels, gen_pred, default_metrics = generation_metrics(*default_setting)
    results["generation"] = {
        **default_metrics,
        "steps": steps,
        "solver": pipeline.scheduler.config.solver,
        "euler_at_final": pipeline.scheduler.config.euler_at_final,
        "decoder_steps": decoder_steps,
        "num_images": len(generated_labels),
        "per_class_accuracy": {
            FASHION_MNIST_LABELS[c]: (gen_pred[generated_labels == c] == c).float().mean().item() for c in range(10)
        },
    }
    # the setting is `generation`'s; each row keeps only its seed and what that seed measured
    by_seed = [default_metrics] + [generation_metrics(*default_setting, seed=seed)[2] for seed in args.noise_seeds[1:]]
    results["generation_by_noise_seed"] = [
        {"noise_seed": seed, "class_accuracy": row["class_accuracy"], "fd_vs_test": row["fd_vs_test"]}
        for seed, row in zip(args.noise_seeds, by_seed)
    ]
    results["guidance_comparison"] = [default_metrics]
    for spec in args.compare_guidance:
        setting = parse_guidance_setting(spec)
        if setting != default_setting:
            results["guidance_comparison"].append(generation_metrics(*setting)[2])
    results["seconds"] = time.time() - started
    write_report(results, render, args.output, args.json)


def add_output_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """`--output` (default `benchmarks/<name>.md`), `--json` and `--render`, which every report script takes."""
    parser.add_argument("--output", default=str(REPO / "benchmarks" / f"{name}.md"))
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--render", default=None, help="only re-render the report from a --json file")


def rerendered(args: argparse.Namespace, render) -> bool:
    """With `--render JSON`: the report re-rendered from that file into `--output`, nothing measured."""
    if args.render:
        Path(args.output).write_text(render(json.loads(Path(args.render).read_text())))
    return bool(args.render)


def write_report(results: dict, render, output: str, json_path: str | None) -> None:
    """`results` rendered as markdown into `output` (and printed), and as JSON into `json_path` when given."""
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    markdown = render(results)
    Path(output).write_text(markdown)
    print(markdown)


def parse_guidance_setting(spec: str) -> tuple[float, list[float], float, float, list[float], float]:
    """`SCALE[:T_START:T_END][/RESCALE][@SCALE[:T_START:T_END]][xLATENT_SCALE]` -> (guidance, its interval, its
    rescale, autoguidance, its interval, the decoder's latent scale); no `/` part: no rescale (0); no `@` part: no
    autoguidance (scale 1); no `x` part: latent scale 1; no times: the whole trajectory."""
    spec, latent_scale = (spec.split("x", 1) + ["1"])[:2]
    guidance, autoguidance = (spec.split("@", 1) + ["1"])[:2]
    guidance, rescale = (guidance.split("/", 1) + ["0"])[:2]
    setting = []
    for part in (guidance, autoguidance):
        values = [float(value) for value in part.split(":")]
        if len(values) not in (1, 3):
            raise ValueError(
                f"Bad guidance setting {spec!r}: expected "
                "SCALE[:T_START:T_END][/RESCALE][@SCALE[:T_START:T_END]][xLATENT_SCALE]."
            )
        setting += [values[0], values[1:] or [0.0, 1.0]]
    return (*setting[:2], float(rescale), *setting[2:], float(latent_scale))


def format_autoguidance(row: dict) -> str:
    scale = row.get("autoguidance_scale", 1.0)  # reports from before autoguidance have none
    if scale == 1:
        return "–"
    interval = format_interval(row["autoguidance_interval"])
    return f"{scale:g}" + (f" at {interval}" if interval else "")


def format_rescale(row: dict) -> str:
    rescale = row.get("guidance_rescale") or 0.0  # reports from before the rescale have none
    return "–" if rescale == 0 else f"{rescale:g}"


def format_latent_scale(row: dict) -> str:
    scale = row.get("decoder_latent_scale") or 1.0  # reports from before the latent scale have none
    return "–" if scale == 1 else f"{scale:g}"


def format_interval(interval) -> str | None:
    """`None` for the whole trajectory."""
    return None if list(interval) == [0.0, 1.0] else f"{interval[0]:g} ≤ t ≤ {interval[1]:g}"


def times_floor(distance: float, results: dict) -> str:
    """`distance` as a multiple of the train-vs-test floor, e.g. `4.23×`."""
    return f"{distance / max(results['fd_floor_train_vs_test'], 1e-9):.2f}×"


def noise_seed_lines(results: dict) -> list[str]:
    """The headline setting on several noise seeds and their mean (nothing for a report of one seed)."""
    rows = results.get("generation_by_noise_seed", [])
    if len(rows) < 2:
        return []
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in ("class_accuracy", "fd_vs_test")}
    return [
        "",
        "The same setting on other noise seeds (one set of samples' distance moves with its noise; the first row is "
        "the one above):",
        "",
        "| noise seed | class accuracy | Fréchet distance | ratio to the floor |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {name} | {100 * row['class_accuracy']:.2f} % | {row['fd_vs_test']:.3f} | "
            f"{times_floor(row['fd_vs_test'], results)} |"
            for name, row in [(row["noise_seed"], row) for row in rows] + [(f"mean of {len(rows)}", mean)]
        ),
    ]


def render(results: dict) -> str:
    gen = results["generation"]
    guided_times = format_interval(gen.get("guidance_interval", [0.0, 1.0]))
    rescaled = format_rescale(gen)
    autoguided = format_autoguidance(gen)
    latent_scaled = format_latent_scale(gen)
    decoding = f"{gen.get('decoder_steps', 1)} decoder step(s)" + (
        f" on the latents scaled by {latent_scaled}" if latent_scaled != "–" else ""
    )
    flow_timesteps = {
        tuple(row["flow_timesteps"]) for row in ablation_rows(results["tokenizers"]).values() if "flow_timesteps" in row
    }
    ablation_flow_times = (
        f" and {describe_flow_timesteps(*flow_timesteps.pop())}" if len(flow_timesteps) == 1
        else " and the flow times in each row's config" if flow_timesteps else ""
    )
    lines = [
        "# UniFlow-FMNIST report",
        "",
        f"Measured by `benchmarks/fmnist_report.py` from the weights in `{Path(results['model']).name}` on a 2-core CPU "
        f"({results['seconds'] / 60:.0f} min). Reconstructions: 1 Euler step of the patch flow decoder unless said "
        "otherwise, PSNR/SSIM with data range 1 on the [0, 1] grayscale images.",
        "",
        "## Tokenizer",
        "",
        *(
            [f"(This table comes from an earlier run of this script on the same tokenizer weights, sha256 "
             f"{results['tokenizer_sha256'][:12]}…; everything after it was measured by this run.)", ""]
            if results.get("tokenizer_rows_reused") else []
        ),
        *(
            [f"(The rows after UniFlow-FMNIST come from an earlier run of this script, `{results['ablation_rows_from']}`"
             + (f"; the teacher they distilled against probed at {100 * results['ablation_teacher_probe']:.2f} %"
                if results.get("ablation_teacher_probe") is not None else "")
             + ".)", ""]
            if results.get("ablation_rows_from") else []
        ),
        "| tokenizer | PSNR (dB) | SSIM | linear probe (%) |",
        "| --- | ---: | ---: | ---: |",
    ]
    if "teacher_probe" in results:
        lines.append(f"| teacher (pretrained encoder, frozen copy) | – | – | {100 * results['teacher_probe']:.2f} |")
    for name, row in results["tokenizers"].items():
        lines.append(f"| {name} | {row['psnr']:.2f} | {row['ssim']:.4f} | {100 * row['probe']:.2f} |")
    if "pca_reference" in results:
        row = results["pca_reference"]
        lines.append(
            f"| linear reference: PCA, {row['num_components']} components (as many numbers as the latent) | "
            f"{row['psnr']:.2f} | {row['ssim']:.4f} | {100 * row['probe']:.2f} |"
        )
    lines += [
        "",
        "## Generation",
        "",
        f"{gen['num_images']} samples (equal per class), guidance {gen['guidance_scale']}"
        f"{f' at flow times {guided_times} (0 = noise)' if guided_times else ''}"
        f"{f' rescaled by {rescaled} (Lin et al., 2024)' if rescaled != '–' else ''}"
        f"{f', autoguidance {autoguided}' if autoguided != '–' else ''}, {gen['steps']} "
        f"{gen.get('solver', 'euler').capitalize()} steps of the generator"
        f"{' (the last a plain Euler step)' if gen.get('euler_at_final') else ''}, {decoding}, "
        f"judged by an independently trained CNN (test accuracy {100 * results['judge_test_accuracy']:.2f} %).",
        "",
        "| metric | value |",
        "| --- | ---: |",
        f"| class accuracy of generated samples | {100 * gen['class_accuracy']:.2f} % |",
        f"| Fréchet distance to the test set (judge features) | {gen['fd_vs_test']:.3f} |",
        f"| floor: train vs test Fréchet distance | {results['fd_floor_train_vs_test']:.3f} |",
        f"| ratio | {times_floor(gen['fd_vs_test'], results)} |",
        *(
            [f"| bound from the tokenizer: its reconstructions of the floor's training images, "
             f"{decoding}, vs test | {results['fd_tokenizer_bound']:.3f} "
             f"({times_floor(results['fd_tokenizer_bound'], results)}) |"]
            if "fd_tokenizer_bound" in results else []
        ),
        *noise_seed_lines(results),
        "",
        "What the decoder's steps trade, on the tokenizer's reconstructions of the 10k test images (same latents):",
        "",
        "| decoder steps | PSNR (dB) | Fréchet distance to the test set |",
        "| ---: | ---: | ---: |",
    ]
    lines += [
        f"| {steps} | {row['psnr']:.2f} | {row['fd_vs_test']:.3f} |"
        for steps, row in results["reconstruction_by_decoder_steps"].items()
    ]
    if len(results.get("guidance_comparison", [])) > 1:
        lines += [
            "",
            "Guidance settings (the same seeds and judge; the first row is the setting above):",
            "",
            "| guidance | flow times guided | rescaled | autoguidance | latents scaled for the decoder | class accuracy "
            "| Fréchet distance | ratio to the floor |",
            "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {row['guidance_scale']} | {format_interval(row['guidance_interval']) or 'all (0 to 1)'} | "
            f"{format_rescale(row)} | {format_autoguidance(row)} | {format_latent_scale(row)} | "
            f"{100 * row['class_accuracy']:.2f} % | {row['fd_vs_test']:.3f} | "
            f"{times_floor(row['fd_vs_test'], results)} |"
            for row in results["guidance_comparison"]
        ]
    lines += [
        "",
        "| class | accuracy |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {100 * acc:.1f} % |" for name, acc in gen["per_class_accuracy"].items()]
    lines += [
        "",
        "## Reading the numbers",
        "",
        "- The shipped tokenizer was adapted for 97 epochs, distilling against the pretrained encoder throughout (3, "
        "then 5 more at half the learning rate, then 8 and nine rounds of 9 with the flow loss's training times "
        "nearer the noise), with its decoder fine-tuned for 5 epochs with the encoder frozen after the 16th, 34th, "
        "43rd, 52nd, 61st, 79th, 88th and 97th (`benchmarks/run_fmnist_recipe.sh`). The last two rounds distilled "
        "against a second run of the pretraining stage a (the first run's weights were lost): "
        "the teacher row is that encoder. The ablation rows (the paper's Table 6a at this scale) each start from the "
        "pretrained encoder they distil against, with an equal budget per row (the epochs are in their "
        f"names){ablation_flow_times}.",
        "- The PCA row is a linear code holding as many numbers per image as UniFlow's latent: what a purely "
        "reconstructive linear code of that size reaches, and how much class information a linear probe finds in it.",
        "- The linear probe reads the mean last-layer token of the frozen encoder (a linear classifier on standardised "
        "features); the teacher row is the pretrained encoder UniFlow started from and distilled against.",
        "- The Fréchet distance of generated samples cannot beat the decoder's fidelity. The bound row shows how "
        "far the decoder alone keeps samples from the test set: a generator that drew exactly the training images' "
        "latents would reach it, and the distance above it is the generator's. (The test set's own reconstructions "
        "sit lower because they are compared with the images they reconstruct.) One decoder step gives the mean of the "
        "patches a latent could stand for (the best PSNR, but blurred); more steps draw sharper patches (lower PSNR, "
        "lower distance), so the pipeline generates with more steps (`decoder_num_inference_steps` in its config) "
        "while reconstruction keeps the release's one.",
        "- Classifier-free guidance trades diversity for class fidelity: higher guidance raises the class accuracy "
        "and the Fréchet distance. Guidance at the first flow times (near the noise, where a sample's layout is "
        "decided) costs the most diversity, and at the last ones (near the data) it costs fidelity, so the pipeline "
        "guides only an interval of flow times (`guidance_interval` in its config; Kynkäänniemi et al., 2024) and "
        "can then guide harder for the same accuracy "
        "(`--guidance-scale`, `--guidance-interval` and `--compare-guidance` re-measure at other settings). Rescaled "
        "guidance (Lin et al., 2024; `guidance_rescale`, as in diffusers' Stable Diffusion pipelines) scales each "
        "guided velocity back to the class-conditional velocity's standard deviation, in part: guidance overshoots "
        "that scale, and pulling it back keeps more of the data's spread at the same guidance.",
        "- Autoguidance (Karras et al., 2024) extrapolates the class-conditional prediction away from a weaker "
        "model's, the pipeline's `guide_transformer` (a smaller DiT trained for fewer steps on the same latents): "
        "where the two differ is where the main model errs too, so it corrects errors instead of trading diversity "
        "for class fidelity, and it can act where classifier-free guidance does not (`autoguidance_interval`).",
        "- The decoder's latent scale (`decoder_latent_scale`) multiplies the generated latents before the decoder "
        "decodes them. The decoder trained for 1-step reconstruction, and run for several steps it decodes slightly "
        "enlarged latents closer to the data (the bound row is measured at the same scale). Guidance enlarges the "
        "latents too, so with the scale the guidance can be lower and the samples keep more of their spread "
        "(`fmnist_experiments.md`).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
