"""`uniflow-hf generate`, `uniflow-hf reconstruct`, `uniflow-hf attach-guide` and `uniflow-hf set-defaults`."""

from __future__ import annotations

import os

from .. import FMNIST_MODEL_PATH
from ..io import check_output_dir
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
    add_device_arguments(parser)
    parser.set_defaults(func=run_generate)

    parser = subparsers.add_parser("reconstruct")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--model", default=None, help="pipeline or UniFlow model folder (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the pixel decoder (model default)")
    parser.add_argument("--seed", type=int, default=0, help="image i decodes with seed + i")
    parser.add_argument("--batch-size", type=int, default=16)
    add_device_arguments(parser)
    parser.set_defaults(func=run_reconstruct)

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


def add_device_arguments(parser) -> None:
    """`--device` and `--dtype`, the dtype resolved for the device (`resolve_device_and_dtype`)."""
    from ..hardware import DTYPE_CHOICES

    parser.add_argument(
        "--device", default=None,
        help="where the models run: cpu, cuda, cuda:N, mps, ... (default: Accelerate's device, the accelerator when "
        "one is present, else the CPU)",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES,
        help="compute dtype; auto (default): bfloat16 where the device runs it natively (CUDA with bf16, CPUs with "
        "AMX or AVX512-BF16), float32 elsewhere. The choice and its reason are printed (stderr).",
    )


def resolve_device_argument(args):
    """The torch device of `--device`, by default Accelerate's (`PartialState().device`: CUDA when present, the
    process's own GPU under a launcher); a device that does not exist here is refused."""
    import torch

    if args.device is None:
        from accelerate import PartialState

        return PartialState().device
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(
            f"--device {args.device!r} is not a device: use cpu, cuda, cuda:N, mps or xpu (leave it out for "
            "Accelerate's device)."
        ) from error
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if device.type != "cpu" and not getattr(backend, "is_available", lambda: False)():
        raise ValueError(f"--device {args.device}: this machine has no {device.type} device (use --device cpu).")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


def resolve_dtype_argument(args, device):
    """The torch dtype of `--dtype` on `device`, printed with its reason (stderr)."""
    import sys

    from ..hardware import choose_dtype

    choice = choose_dtype(args.dtype, device)
    print(f"uniflow-hf {args.command}: device {device}, dtype {choice}", file=sys.stderr)
    return choice.dtype


def resolve_device_and_dtype(args):
    """(device, dtype) of `--device` and `--dtype` (see `resolve_device_argument`, `resolve_dtype_argument`)."""
    device = resolve_device_argument(args)
    return device, resolve_dtype_argument(args, device)


# ---------------------------------------------------------------------------------------------------- commands
def _check_positive(value, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}.")


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
    check_output_dir(args.output_dir)
    device, dtype = resolve_device_and_dtype(args)
    pipeline = load_class_conditional_pipeline(args.model or FMNIST_MODEL_PATH, dtype=dtype).to(device)
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
    check_output_dir(args.output_dir)
    device, dtype = resolve_device_and_dtype(args)
    pipeline = load_reconstruction_pipeline(args.model or FMNIST_MODEL_PATH, dtype=dtype).to(device)
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


def run_attach_guide(args) -> int:
    from ..generator_training import attach_guide

    check_output_dir(args.output_dir)
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
    check_output_dir(args.output_dir)
    pipeline = load_class_conditional_pipeline(args.model)
    # a new pipeline, so that its __init__ checks the settings as it checks those of any pipeline
    pipeline = type(pipeline)(**pipeline.components, **{**pipeline.settings, **changes})
    pipeline.save_pretrained(args.output_dir)
    print(f"Saved the pipeline to {args.output_dir} with " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    return 0
