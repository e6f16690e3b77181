"""`uniflow-hf generate`, `uniflow-hf reconstruct`, `uniflow-hf attach-guide` and `uniflow-hf set-defaults`."""

from __future__ import annotations

import os

from .. import FMNIST_MODEL_PATH
from ..inference import image_grid, load_class_conditional_pipeline, load_reconstruction_pipeline, reconstruct_images
from ..io import check_output_dir
from ..pipelines.pipeline_uniflow_class_conditional import SAMPLING_SETTINGS


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate")
    parser.add_argument("--label", required=True, help="class name (from the model's id2label) or class id")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--model", default=None, help="class-conditional pipeline folder (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=25, help="steps of the latent flow")
    add_sampling_arguments(parser, "default: the pipeline's")
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
    autoguidance = ("autoguidance_scale", "autoguidance_interval")
    add_sampling_arguments(parser, "the pipeline's default", names=autoguidance, required=autoguidance[:1])
    parser.set_defaults(func=run_attach_guide)

    parser = subparsers.add_parser("set-defaults")
    parser.add_argument("--model", required=True, help="class-conditional pipeline folder")
    parser.add_argument("--output-dir", required=True, help="where to save the pipeline with its new defaults")
    add_sampling_arguments(parser, "the pipeline's new default")
    parser.set_defaults(func=run_set_defaults)


def add_sampling_arguments(parser, default: str, names=tuple(SAMPLING_SETTINGS), required=()) -> None:
    """Options for the class-conditional pipeline's sampling settings `names` (`SAMPLING_SETTINGS`, which the pipeline
    checks); `default` says what a given value is, or what applies without one."""
    for name in names:
        option = "--decoder-steps" if name == "decoder_num_inference_steps" else "--" + name.replace("_", "-")
        if name.endswith("_interval"):
            kind = dict(type=float, nargs=2, metavar=("T_START", "T_END"))
        else:
            kind = dict(type=int if name == "decoder_num_inference_steps" else float, metavar="VALUE")
        help = f"the pipeline's `{name}`: {SAMPLING_SETTINGS[name][1]} ({default})"
        parser.add_argument(option, dest=name, required=name in required, help=help, **kind)


def sampling_arguments(args) -> dict:
    """The sampling settings given on the command line."""
    return {name: getattr(args, name) for name in SAMPLING_SETTINGS if getattr(args, name, None) is not None}


def add_device_arguments(parser) -> None:
    """`--device` and `--dtype`, the dtype resolved for the device (`resolve_dtype_argument`)."""
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
    """The torch device of `--device`, by default Accelerate's (`PartialState().device`); a device that does not
    exist here is refused."""
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


def run_generate(args) -> int:
    import torch

    if args.num_images < 1:
        raise ValueError(f"--num-images must be a positive integer, got {args.num_images}.")
    check_output_dir(args.output_dir)
    device = resolve_device_argument(args)
    dtype = resolve_dtype_argument(args, device)
    pipeline = load_class_conditional_pipeline(args.model or FMNIST_MODEL_PATH, dtype=dtype).to(device)
    label = args.label
    if label not in pipeline.labels and label.lstrip("-").isdigit():  # a class id; an unknown name is reported
        label = int(label)
    class_id = pipeline.get_label_ids(label)[0]
    name = (pipeline.config.id2label or {}).get(class_id, str(class_id))
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)]
    images = pipeline(
        [class_id] * args.num_images, num_inference_steps=args.steps, generator=generators, **sampling_arguments(args)
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
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"No such image file(s): {', '.join(missing)}")
    check_output_dir(args.output_dir)
    device = resolve_device_argument(args)
    dtype = resolve_dtype_argument(args, device)
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
    blocks = pipeline.guide_transformer.config.num_layers
    print(f"Saved the pipeline with its guide ({blocks} blocks) to {args.output_dir}")
    return 0


def run_set_defaults(args) -> int:
    changes = sampling_arguments(args)
    if not changes:
        raise ValueError(
            "Nothing to set: pass at least one of --guidance-scale, --guidance-interval, --guidance-rescale, "
            "--autoguidance-scale, --autoguidance-interval, --decoder-steps, --decoder-latent-scale."
        )
    check_output_dir(args.output_dir)
    pipeline = load_class_conditional_pipeline(args.model)
    # a new pipeline, whose __init__ checks the settings as it checks those of any pipeline
    pipeline = type(pipeline)(**pipeline.components, **{**pipeline.settings, **changes})
    pipeline.save_pretrained(args.output_dir)
    print(f"Saved the pipeline to {args.output_dir} with " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    return 0
