"""Write `benchmarks/fmnist_ablation_seeds.md`: ablation settings of the paper's Table 6a over several training seeds.

    python benchmarks/fmnist_ablation_seeds.py --teacher DIR \
        --runs "adaptive β=2:0=DIR" "uniform weights:0=DIR" "adaptive β=2:1=DIR" ... \
        [--json benchmarks/fmnist_ablation_seeds.json] [--output benchmarks/fmnist_ablation_seeds.md]

Each run is the output folder of `uniflow-hf fmnist adapt`, named SETTING:SEED (its `--seed`). One seed gives every
setting the same decoder initialisation, batches and noise, so besides each setting's rows and its mean and standard
deviation over seeds, the report compares each setting with the first one seed by seed (paired differences, their
mean and its standard error). The numbers are `fmnist_report.py`'s tokenizer rows: PSNR / SSIM of 1-step reconstructions of the test images
and the linear probe of the encoder's mean last-layer token.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]


def parse_run(spec: str) -> tuple[str, int, str]:
    """`SETTING:SEED=DIR` -> (setting, seed, folder); settings may hold "=" (β=2), folders may not."""
    name, _, folder = spec.rpartition("=")
    setting, _, seed = name.rpartition(":")
    if not (folder and setting and seed.isdigit()):
        raise SystemExit(f"--runs takes SETTING:SEED=DIR (e.g. 'adaptive β=2:0=runs/ablation-adaptive'), got {spec!r}.")
    return setting, int(seed), folder


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_differences(runs: list[dict], setting: str, reference: str, key: str) -> list[float]:
    """`setting` minus `reference` on `key`, for every seed both were run with."""
    by_seed = {run["seed"]: run[key] for run in runs if run["setting"] == reference}
    return [run[key] - by_seed[run["seed"]] for run in runs if run["setting"] == setting and run["seed"] in by_seed]


def render(results: dict) -> str:
    runs = results["runs"]
    settings = list(dict.fromkeys(run["setting"] for run in runs))
    reference = settings[0]
    lines = [
        "# UniFlow-FMNIST ablations over training seeds",
        "",
        f"Measured by `benchmarks/fmnist_ablation_seeds.py` on a 2-core CPU ({results['seconds'] / 60:.0f} min for the "
        f"measurements). Each run adapts the same pretrained encoder (linear probe {100 * results['teacher_probe']:.2f} %) "
        "with `uniflow-hf fmnist adapt` at the same budget; a training seed (`--seed`) gives every setting the same "
        "decoder initialisation, batches and flow noise, so runs of one seed differ only by their setting. PSNR / SSIM: 1-step reconstructions of "
        "the 10k test images (data range 1); probe: linear probe of the encoder's mean last-layer token.",
        "",
        "| setting | training seed | PSNR (dB) | SSIM | linear probe (%) |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {run['setting']} | {run['seed']} | {run['psnr']:.2f} | {run['ssim']:.4f} | {100 * run['probe']:.2f} |"
            for setting in settings for run in runs if run["setting"] == setting
        ),
        "",
        "Mean ± standard deviation over the seeds:",
        "",
        "| setting | seeds | PSNR (dB) | SSIM | linear probe (%) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for setting in settings:
        own = [run for run in runs if run["setting"] == setting]
        (psnr, psnr_sd), (ssim, ssim_sd), (probe, probe_sd) = (
            mean_and_spread([run[key] for run in own]) for key in ("psnr", "ssim", "probe")
        )
        lines.append(
            f"| {setting} | {len(own)} | {psnr:.2f} ± {psnr_sd:.2f} | {ssim:.4f} ± {ssim_sd:.4f} "
            f"| {100 * probe:.2f} ± {100 * probe_sd:.2f} |"
        )
    if len(settings) > 1:
        lines += [
            "",
            f"Paired by seed, each setting minus {reference} (mean ± its standard error; the seeds where "
            f"{reference} is at least as good on both numbers):",
            "",
            f"| setting − {reference} | seeds | PSNR (dB) | linear probe (points) | {reference} at least as good on both |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for setting in settings[1:]:
            psnr, probe = (paired_differences(runs, setting, reference, key) for key in ("psnr", "probe"))
            if not psnr:
                continue
            (psnr_mean, psnr_sd), (probe_mean, probe_sd) = mean_and_spread(psnr), mean_and_spread(probe)
            root = len(psnr) ** 0.5
            reference_holds = sum(p <= 0 and q <= 0 for p, q in zip(psnr, probe))
            lines.append(
                f"| {setting} | {len(psnr)} | {psnr_mean:+.3f} ± {psnr_sd / root:.3f} "
                f"| {100 * probe_mean:+.2f} ± {100 * probe_sd / root:.2f} | {reference_holds} of {len(psnr)} |"
            )
    return "\n".join(lines) + "\n"


def main():
    # the script's folder is on sys.path when it runs
    from fmnist_report import (
        add_output_arguments, encoder_features, linear_probe_accuracy, rerendered, tokenizer_rows, write_report,
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="the pretrained encoder folder the runs distilled against")
    parser.add_argument("--runs", nargs="+", default=[], metavar="SETTING:SEED=DIR",
                        help="tokenizer folders of the ablation runs; the first run's setting is the reference")
    parser.add_argument("--num-recon", type=int, default=10000)
    add_output_arguments(parser, "fmnist_ablation_seeds")
    args = parser.parse_args()
    if rerendered(args, render):
        return
    if not (args.teacher and args.runs):
        parser.error("--teacher and --runs are needed to measure (or --render JSON to re-render)")
    runs = [parse_run(spec) for spec in args.runs]  # a malformed spec fails before anything is measured
    torch.set_num_threads(2)

    from uniflow_hf.recipes.fmnist import fmnist_pixel_values, load_fashion_mnist_arrays
    from uniflow_hf.modeling import UniFlowForImageClassification, UniFlowModel

    started = time.time()
    train_x, train_y = load_fashion_mnist_arrays("train")
    test_x, test_y = load_fashion_mnist_arrays("test")
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)
    train_pv, test_pv = fmnist_pixel_values(train_x), fmnist_pixel_values(test_x)

    teacher = UniFlowForImageClassification.from_pretrained(args.teacher).vision_model
    features = [encoder_features(teacher, pv) for pv in (train_pv, test_pv)]
    results = {"teacher": args.teacher, "teacher_probe": linear_probe_accuracy(features[0], train_y, features[1], test_y)}
    results["runs"] = []
    for setting, seed, folder in runs:
        tokenizer = UniFlowModel.from_pretrained(folder).eval()
        row = tokenizer_rows(tokenizer, train_pv, train_y, test_pv, test_y, args.num_recon)
        results["runs"].append({"setting": setting, "seed": seed, "folder": folder, **row})
        print(f"{setting} (seed {seed}): {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}, probe {100 * row['probe']:.2f} %")
    results["seconds"] = time.time() - started
    write_report(results, render, args.output, args.json)


if __name__ == "__main__":
    main()
