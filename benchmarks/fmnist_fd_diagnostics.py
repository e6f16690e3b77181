"""Write `benchmarks/fmnist_fd_diagnostics.md`: where UniFlow-FMNIST's generated samples lose their Fréchet distance.

    python benchmarks/fmnist_fd_diagnostics.py [--model uniflow_hf/models/uniflow-fmnist] [--num-generated 10000]
        [--noise-seed 0] [--noise-scales 0.97 0.985 1.04] [--json FILE] [--output benchmarks/fmnist_fd_diagnostics.md]

With `fmnist_report.py`'s judge (trained the same way, so the same floor) and the pipeline's default sampling settings:
- the distance to the test set of the training images (the floor), of the tokenizer's bound (those images
  reconstructed with the generation's decoder steps) and of generated samples, as they are and with each class's
  features moved onto the test set's class mean: how much of each distance is a per-class shift of the features;
- each class's spread (its summed feature variance) in those sets and in the test set;
- the generated samples with the latent flow's starting noise scaled (a temperature; 1 is the pipeline's own).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]


def class_means_moved(features, labels, reference_features, reference_labels) -> torch.Tensor:
    """`features` with each class's mean moved onto that class's mean in `reference_features`."""
    moved = features.clone()
    for class_id in labels.unique().tolist():
        mine, theirs = labels == class_id, reference_labels == class_id
        moved[mine] += reference_features[theirs].mean(0) - features[mine].mean(0)
    return moved


def class_spreads(features, labels, num_classes: int = 10) -> list[float]:
    """Each class's summed feature variance."""
    return [features[labels == class_id].var(0).sum().item() for class_id in range(num_classes)]


def sample_set_row(features, labels, test_features, test_labels) -> dict:
    from uniflow_hf.metrics._common import frechet_distance_of_features

    moved = class_means_moved(features, labels, test_features, test_labels)
    return {
        "fd_vs_test": frechet_distance_of_features(features, test_features),
        "fd_class_means_moved": frechet_distance_of_features(moved, test_features),
        "class_spread": class_spreads(features, labels),
    }


SET_NAMES = {
    "floor": "training images (the floor)",
    "bound": "their reconstructions (the bound)",
    "generated": "generated samples",
}


def render(results: dict) -> str:
    sets, floor = results["sets"], results["sets"]["floor"]["fd_vs_test"]
    labels = results["labels"]
    lines = [
        "# UniFlow-FMNIST: where the Fréchet distance comes from",
        "",
        f"Measured by `benchmarks/fmnist_fd_diagnostics.py` from the weights in `{Path(results['model']).name}` on a "
        f"2-core CPU ({results['seconds'] / 60:.0f} min), with `fmnist_report.py`'s judge (test accuracy "
        f"{100 * results['judge_test_accuracy']:.2f} %). {results['num_generated']} generated samples (noise seed "
        f"{results['noise_seed']}) at the pipeline's default settings, {results['decoder_steps']} decoder steps; "
        f"{results['num_floor']} training images for the floor and the bound, as in the report.",
        "",
        "| samples | Fréchet distance to the test set | with each class's mean moved onto the test set's |",
        "| --- | ---: | ---: |",
        *(
            f"| {SET_NAMES[name]} | {row['fd_vs_test']:.3f} ({row['fd_vs_test'] / floor:.2f}×) | "
            f"{row['fd_class_means_moved']:.3f} |"
            for name, row in sets.items()
        ),
        "",
        "Each class's spread (summed variance of the judge's features):",
        "",
        "| class | test set | " + " | ".join(SET_NAMES[name] for name in sets) + " | generated / bound |",
        "| --- | ---: | " + " | ".join("---:" for _ in sets) + " | ---: |",
    ]
    for class_id, name in enumerate(labels):
        spreads = [results["test_class_spread"][class_id]] + [row["class_spread"][class_id] for row in sets.values()]
        ratio = sets["generated"]["class_spread"][class_id] / sets["bound"]["class_spread"][class_id]
        lines.append(f"| {name} | " + " | ".join(f"{value:.1f}" for value in spreads) + f" | {ratio:.2f} |")
    lines += [
        "",
        "The latent flow's starting noise scaled (1: the pipeline's own draw; the same noise seed):",
        "",
        "| noise scale | class accuracy | Fréchet distance | ratio to the floor |",
        "| ---: | ---: | ---: | ---: |",
        *(
            f"| {row['noise_scale']:g} | {100 * row['class_accuracy']:.2f} % | {row['fd_vs_test']:.3f} | "
            f"{row['fd_vs_test'] / floor:.2f}× |"
            for row in results["noise_scales"]
        ),
    ]
    return "\n".join(lines) + "\n"


def main():
    # the script's folder is on sys.path when it runs
    from fmnist_report import (
        NUM_FLOOR, add_output_arguments, bound_reconstructions, generate_all, rerendered, write_report,
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "uniflow_hf" / "models" / "uniflow-fmnist"))
    parser.add_argument("--num-generated", type=int, default=10000)
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--noise-scales", type=float, nargs="*", default=[],
                        help="also generate with the starting noise scaled by these (1 is always measured)")
    add_output_arguments(parser, "fmnist_fd_diagnostics")
    args = parser.parse_args()
    if rerendered(args, render):
        return
    if any(not scale > 0 for scale in args.noise_scales):
        parser.error(f"--noise-scales must be positive, got {args.noise_scales}")
    torch.set_num_threads(2)

    from uniflow_hf import UniFlowClassConditionalPipeline
    from uniflow_hf.recipes.fmnist import FASHION_MNIST_LABELS, fmnist_pixel_values, load_fashion_mnist_arrays
    from uniflow_hf.metrics._common import frechet_distance_of_features

    started = time.time()
    train_x, train_y = load_fashion_mnist_arrays("train")
    test_x, test_y = load_fashion_mnist_arrays("test")
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)
    train_unit, test_unit = torch.from_numpy(train_x).float() / 255, torch.from_numpy(test_x).float() / 255
    pipeline = UniFlowClassConditionalPipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    decoder_steps = pipeline.sampling_setting("decoder_num_inference_steps")

    judge = train_judge(train_unit, train_y)
    test_features, test_predictions = judge_outputs(judge, test_unit)
    floor_labels = train_y[:NUM_FLOOR]
    bound_images = bound_reconstructions(
        pipeline.tokenizer.eval(), fmnist_pixel_values(train_x[:NUM_FLOOR]), decoder_steps
    )
    sets = {
        name: sample_set_row(judge_outputs(judge, images)[0], floor_labels, test_features, test_y)
        for name, images in (("floor", train_unit[:NUM_FLOOR]), ("bound", bound_images))
    }
    noise_scales = []
    for scale in sorted({1.0, *args.noise_scales}):
        # None: the pipeline's default guidance, intervals, rescale, autoguidance and decoder steps
        generated, labels = generate_all(pipeline, args.num_generated // 10, None, 25, seed=args.noise_seed,
                                         noise_scale=scale)
        features, predictions = judge_outputs(judge, generated)
        noise_scales.append({
            "noise_scale": scale,
            "class_accuracy": (predictions == labels).float().mean().item(),
            "fd_vs_test": frechet_distance_of_features(features, test_features),
        })
        print(noise_scales[-1], flush=True)
        if scale == 1:
            sets["generated"] = sample_set_row(features, labels, test_features, test_y)
    results = {
        "model": args.model, "num_generated": len(labels), "noise_seed": args.noise_seed, "num_floor": NUM_FLOOR,
        "decoder_steps": decoder_steps, "labels": FASHION_MNIST_LABELS,
        "judge_test_accuracy": (test_predictions == test_y).float().mean().item(),
        "test_class_spread": class_spreads(test_features, test_y), "sets": sets, "noise_scales": noise_scales,
        "seconds": time.time() - started,
    }
    write_report(results, render, args.output, args.json)


if __name__ == "__main__":
    main()
