"""`uniflow-hf generate`, `uniflow-hf reconstruct`, `uniflow-hf train-generator`, `uniflow-hf attach-guide` and
`uniflow-hf set-defaults`."""

from __future__ import annotations

import json
import os

from .. import FMNIST_MODEL_PATH
from ..inference import image_grid, load_class_conditional_pipeline, load_reconstruction_pipeline, reconstruct_images


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate")
    parser.add_argument("--label", required=True, help="class name (from the model's id2label) or class id")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--model", default=None, help="class-conditional pipeline folder (default: the shipped model)")
    add_guidance_arguments(parser, "classifier-free guidance (1 = none; default: the pipeline's, else 1.5)")
    add_autoguidance_arguments(parser, "autoguidance by the pipeline's guide_transformer (1 = none; default: the pipeline's)")
    parser.add_argument("--steps", type=int, default=25, help="steps of the latent flow")
    parser.add_argument("--decoder-steps", type=int, default=None, help="steps of the pixel decoder (default: the pipeline's)")
    add_decoder_latent_scale_argument(parser, "(default: the pipeline's, else 1)")
    parser.set_defaults(func=run_generate)

    parser = subparsers.add_parser("reconstruct")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--model", default=None, help="pipeline or UniFlow model folder (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the pixel decoder (model default)")
    parser.add_argument("--seed", type=int, default=0, help="image i decodes with seed + i")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.set_defaults(func=run_reconstruct)

    parser = subparsers.add_parser("train-generator", help="train a class-conditional latent generator")
    parser.add_argument("--tokenizer", required=True, help="UniFlow model folder (or a pipeline folder holding one)")
    parser.add_argument("--dataset", required=True, help="an imagefolder directory or a `save_to_disk` dataset")
    parser.add_argument("--split", default="train", help="split to use when the dataset has several")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num-train-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--ema-decay", type=float, default=None)
    parser.add_argument(
        "--decoder-steps", type=int, default=None,
        help="the pipeline's default steps of the pixel decoder when generating (default: the tokenizer's)",
    )
    add_solver_arguments(parser)
    add_guidance_arguments(parser, "the pipeline's default classifier-free guidance (default: 1.5)")
    parser.add_argument("--seed", type=int, default=0)
    add_transformer_kwargs_argument(parser)
    add_init_generator_arguments(parser)
    add_lr_schedule_arguments(parser)
    add_training_timestep_arguments(parser)
    parser.set_defaults(func=run_train_generator)

    parser = subparsers.add_parser("attach-guide")
    parser.add_argument("--model", required=True, help="class-conditional pipeline folder")
    parser.add_argument(
        "--guide", required=True,
        help="pipeline folder of the guide: a smaller and/or shorter-trained DiT on the same tokenizer and dataset",
    )
    parser.add_argument("--output-dir", required=True, help="where to save the pipeline with its guide")
    add_autoguidance_arguments(parser, "the pipeline's default autoguidance (1 = none)", required=True)
    parser.set_defaults(func=run_attach_guide)

    parser = subparsers.add_parser("set-defaults")
    parser.add_argument("--model", required=True, help="class-conditional pipeline folder")
    parser.add_argument("--output-dir", required=True, help="where to save the pipeline with its new defaults")
    add_guidance_arguments(parser, "the default classifier-free guidance (1 = none)")
    add_autoguidance_arguments(parser, "the default autoguidance (1 = none; needs the pipeline's guide_transformer)")
    parser.add_argument("--decoder-steps", type=int, default=None, help="the default steps of the pixel decoder")
    add_decoder_latent_scale_argument(parser, "(the default; 1 = none)")
    parser.set_defaults(func=run_set_defaults)


# ---------------------------------------------------------------------------------------------------- commands
def _check_positive(value, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}.")


def add_solver_arguments(parser) -> None:
    parser.add_argument(
        "--solver", default="euler", choices=["euler", "heun"], help="the saved pipeline's solver of the latent flow"
    )
    parser.add_argument(
        "--euler-at-final", action="store_true",
        help="with --solver heun: end with a plain Euler step (no network call at t = 1, the data end)",
    )


def add_guidance_arguments(parser, scale_help: str) -> None:
    parser.add_argument("--guidance-scale", type=float, default=None, help=scale_help)
    parser.add_argument(
        "--guidance-interval", type=float, nargs=2, default=None, metavar=("T_START", "T_END"),
        help="guide only at flow times in [T_START, T_END] (0 = noise, 1 = data; default: the pipeline's, else all)",
    )
    parser.add_argument(
        "--guidance-rescale", type=float, default=None,
        help="rescaled guidance in [0, 1] (Lin et al., 2024): the guided velocity pulled back toward the class-"
        "conditional one's standard deviation (0 = none; default: the pipeline's, else 0)",
    )


def add_decoder_latent_scale_argument(parser, default_help: str) -> None:
    parser.add_argument(
        "--decoder-latent-scale", type=float, default=None,
        help=f"multiply the generated latents by this before the pixel decoder decodes them {default_help}",
    )


def add_autoguidance_arguments(parser, scale_help: str, required: bool = False) -> None:
    parser.add_argument("--autoguidance-scale", type=float, default=None, required=required, help=scale_help)
    parser.add_argument(
        "--autoguidance-interval", type=float, nargs=2, default=None, metavar=("T_START", "T_END"),
        help="autoguide only at flow times in [T_START, T_END] (0 = noise, 1 = data; default: the pipeline's, else all)",
    )


def add_transformer_kwargs_argument(parser) -> None:
    parser.add_argument(
        "--transformer-kwargs", type=json.loads, default=None,
        help='size of a new DiT as JSON, e.g. \'{"num_layers": 4, "attention_head_dim": 32, "patch_size": 1}\'',
    )


def add_init_generator_arguments(parser) -> None:
    parser.add_argument(
        "--init-generator", default=None,
        help="continue training the DiT of this pipeline (or transformer) folder instead of a new one (use another --seed)",
    )
    parser.add_argument(
        "--add-layers", type=int, default=0,
        help="with --init-generator: first deepen that DiT by N blocks that start as the identity (copies of evenly "
        "spaced blocks with closed adaLN-Zero gates), so the larger DiT starts where the smaller one ended",
    )


def add_lr_schedule_arguments(parser) -> None:
    parser.add_argument(
        "--lr-scheduler-type", default="constant",
        help="learning-rate schedule over the steps: constant, constant_with_warmup, linear or cosine (the last two "
        "decay to 0, e.g. for a last stage continuing --init-generator)",
    )
    parser.add_argument("--warmup-steps", type=int, default=0, help="steps of linear learning-rate warm-up")


def add_training_timestep_arguments(parser) -> None:
    from ..modeling.configuration_uniflow import FLOW_TIMESTEP_DISTRIBUTIONS

    parser.add_argument(
        "--timestep-distribution", default=None, choices=FLOW_TIMESTEP_DISTRIBUTIONS,
        help="training flow times of the generator (default: fat_lognormal, the release's: a logit-normal with a "
        "share of uniform times)",
    )
    parser.add_argument(
        "--timestep-logit-mean", type=float, default=None,
        help="mean of the logit-normal (default 0: centred at t = 0.5; > 0 trains more at the data end, t = 1)",
    )
    parser.add_argument("--timestep-logit-std", type=float, default=None, help="its standard deviation (default 1)")
    parser.add_argument(
        "--timestep-uniform-fraction", type=float, default=None,
        help="share of uniform times in fat_lognormal (default 0.1)",
    )


def training_noise_scheduler(args):
    """The scheduler that draws the generator's training flow times, from the `--timestep-*` arguments."""
    from ..pipelines.scheduling_uniflow_flow_match import UniFlowFlowMatchScheduler

    values = {
        "training_timestep_distribution": args.timestep_distribution,
        "logit_mean": args.timestep_logit_mean,
        "logit_std": args.timestep_logit_std,
        "uniform_fraction": args.timestep_uniform_fraction,
    }
    return UniFlowFlowMatchScheduler(**{name: value for name, value in values.items() if value is not None})


def _label_argument(pipeline, label: str) -> int | str:
    """A known class name stays a name; otherwise an integer string is a class id."""
    if label in pipeline.labels:
        return label
    try:
        return int(label)
    except ValueError:
        return label  # the pipeline reports the unknown name with the known ones


def run_generate(args) -> int:
    import torch

    _check_positive(args.num_images, "--num-images")
    pipeline = load_class_conditional_pipeline(args.model or FMNIST_MODEL_PATH)
    label = _label_argument(pipeline, args.label)
    class_id = pipeline.get_label_ids(label)[0]
    name = (pipeline.config.id2label or {}).get(class_id, str(class_id))
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)]
    images = pipeline(
        [class_id] * args.num_images,
        guidance_scale=args.guidance_scale,
        guidance_interval=args.guidance_interval,
        guidance_rescale=args.guidance_rescale,
        autoguidance_scale=args.autoguidance_scale,
        autoguidance_interval=args.autoguidance_interval,
        num_inference_steps=args.steps,
        decoder_num_inference_steps=args.decoder_steps,
        decoder_latent_scale=args.decoder_latent_scale,
        generator=generators,
    ).images

    os.makedirs(args.output_dir, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    for i, image in enumerate(images):
        image.save(os.path.join(args.output_dir, f"{stem}_{args.seed + i:04d}.png"))
    grid_path = os.path.join(args.output_dir, f"{stem}_grid.png")
    image_grid(images).save(grid_path)
    print(f"Wrote {len(images)} images of class {name!r} (id {class_id}) and {grid_path}")
    return 0


def run_reconstruct(args) -> int:
    _check_positive(args.steps, "--steps", allow_none=True)
    _check_positive(args.batch_size, "--batch-size")
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"No such image file(s): {', '.join(missing)}")
    pipeline = load_reconstruction_pipeline(args.model or FMNIST_MODEL_PATH)
    result = reconstruct_images(
        pipeline, args.images, num_inference_steps=args.steps, seed=args.seed, batch_size=args.batch_size
    )
    stems = [os.path.splitext(os.path.basename(path))[0] for path in args.images]
    if len(set(stems)) < len(stems):
        stems = [f"{i:04d}_{stem}" for i, stem in enumerate(stems)]
    os.makedirs(args.output_dir, exist_ok=True)
    originals, reconstructions = (
        pipeline.numpy_to_pil(x.permute(0, 2, 3, 1).numpy()) for x in (result.inputs, result.reconstructions)
    )
    for i, path in enumerate(args.images):
        out_path = os.path.join(args.output_dir, f"{stems[i]}_reconstruction.png")
        image_grid([originals[i], reconstructions[i]]).save(out_path)
        print(f"{path}: PSNR {result.psnr[i]:.2f} dB  SSIM {result.ssim[i]:.4f}  -> {out_path}")
    psnr, ssim = sum(result.psnr) / len(result.psnr), sum(result.ssim) / len(result.ssim)
    print(f"mean over {len(result.psnr)} image(s): PSNR {psnr:.2f} dB  SSIM {ssim:.4f}")
    return 0


def run_train_generator(args) -> int:
    from ..data import load_image_dataset
    from ..generator_training import train_generator

    noise_scheduler = training_noise_scheduler(args)  # checked before the tokenizer and the dataset load
    tokenizer = load_reconstruction_pipeline(args.tokenizer).tokenizer
    dataset = load_image_dataset(args.dataset, args.split)
    result = train_generator(
        tokenizer,
        dataset,
        image_column=args.image_column,
        label_column=args.label_column,
        output_dir=args.output_dir,
        num_train_steps=args.num_train_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        label_dropout=args.label_dropout,
        seed=args.seed,
        transformer_kwargs=args.transformer_kwargs,
        ema_decay=args.ema_decay,
        decoder_num_inference_steps=args.decoder_steps,
        solver=args.solver,
        euler_at_final=args.euler_at_final,
        guidance_scale=args.guidance_scale,
        guidance_interval=args.guidance_interval,
        guidance_rescale=args.guidance_rescale,
        init_transformer=args.init_generator,
        add_layers=args.add_layers,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps,
        noise_scheduler=noise_scheduler,
    )
    last = result.losses[-min(100, len(result.losses)) :]
    print(f"Trained {len(result.losses)} steps (mean loss of the last {len(last)}: {sum(last) / len(last):.4f})")
    print(f"Saved the UniFlowClassConditionalPipeline to {args.output_dir}")
    return 0


def run_attach_guide(args) -> int:
    from ..generator_training import attach_guide

    pipelines = [load_class_conditional_pipeline(folder) for folder in (args.model, args.guide)]
    pipeline = attach_guide(*pipelines, args.autoguidance_scale, args.autoguidance_interval)
    pipeline.save_pretrained(args.output_dir)
    print(f"Saved the pipeline with its guide ({pipeline.guide_transformer.config.num_layers} blocks) to {args.output_dir}")
    return 0


# the `set-defaults` options and the pipeline settings they set
DEFAULT_SETTING_OPTIONS = {
    "guidance_scale": "guidance_scale", "guidance_interval": "guidance_interval",
    "guidance_rescale": "guidance_rescale", "autoguidance_scale": "autoguidance_scale",
    "autoguidance_interval": "autoguidance_interval", "decoder_steps": "decoder_num_inference_steps",
    "decoder_latent_scale": "decoder_latent_scale",
}


def run_set_defaults(args) -> int:
    changes = {
        setting: getattr(args, option) for option, setting in DEFAULT_SETTING_OPTIONS.items()
        if getattr(args, option) is not None
    }
    if not changes:
        options = ", ".join("--" + option.replace("_", "-") for option in DEFAULT_SETTING_OPTIONS)
        raise ValueError(f"Nothing to set: pass at least one of {options}.")
    pipeline = load_class_conditional_pipeline(args.model)
    # a new pipeline, so that its __init__ checks the settings as it checks those of any pipeline
    pipeline = type(pipeline)(**pipeline.components, **{**pipeline.settings, **changes})
    pipeline.save_pretrained(args.output_dir)
    print(f"Saved the pipeline to {args.output_dir} with " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    return 0
