"""`uniflow-hf generate`, `uniflow-hf reconstruct`, `uniflow-hf attach-guide` and `uniflow-hf set-defaults`, with the
loaders of their pipelines."""

from __future__ import annotations

import os
import sys

from .. import FMNIST_MODEL_PATH
from ..io import check_output_dir
from ..pipelines.pipeline_uniflow_class_conditional import SAMPLING_SETTINGS


SAMPLING_OPTIONS = {name: "--" + name.replace("_", "-") for name in SAMPLING_SETTINGS}
SAMPLING_OPTIONS["decoder_num_inference_steps"] = "--decoder-steps"


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
    parser.add_argument("--guide", required=True, help="pipeline folder of a DiT on the same tokenizer and dataset")
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
    """Options for the class-conditional pipeline's sampling settings `names`, which the pipeline checks; `default`
    says what a given value is, or what applies without one."""
    for name in names:
        scalar = dict(type=int if name == "decoder_num_inference_steps" else float, metavar="VALUE")
        kind = dict(type=float, nargs=2, metavar=("T_START", "T_END")) if name.endswith("_interval") else scalar
        help = f"the pipeline's `{name}`: {SAMPLING_SETTINGS[name][1]} ({default})"
        parser.add_argument(SAMPLING_OPTIONS[name], dest=name, required=name in required, help=help, **kind)


def sampling_arguments(args) -> dict:
    """The sampling settings given on the command line."""
    return {name: getattr(args, name) for name in SAMPLING_SETTINGS if getattr(args, name, None) is not None}


def add_device_arguments(parser) -> None:
    from ..hardware import DTYPE_CHOICES

    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps, ... (default: Accelerate's device)")
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES,
        help="compute dtype; auto: bfloat16 where the device runs it natively, else float32 (printed, with why)",
    )


def resolve_device_argument(args):
    """The torch device of `--device`, by default Accelerate's; a device that does not exist here is refused."""
    import torch

    if args.device is None:
        from accelerate import PartialState

        return PartialState().device
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(f"--device {args.device!r} is not a device: use cpu, cuda, cuda:N, mps or xpu.") from error
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if device.type != "cpu" and not getattr(backend, "is_available", lambda: False)():
        raise ValueError(f"--device {args.device}: this machine has no {device.type} device (use --device cpu).")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


def resolve_dtype_argument(args, device):
    """The torch dtype of `--dtype` on `device`, printed with its reason (stderr)."""
    from ..hardware import choose_dtype

    choice = choose_dtype(args.dtype, device)
    print(f"uniflow-hf {args.command}: device {device}, dtype {choice}", file=sys.stderr)
    return choice.dtype


def load_class_conditional_pipeline(model_dir: str | os.PathLike, dtype=None):
    """The `UniFlowClassConditionalPipeline` saved in `model_dir`, in `dtype` when given (else as saved)."""
    from diffusers import DiffusionPipeline

    from ..pipelines import UniFlowClassConditionalPipeline

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"The model folder {model_dir} does not exist.")
    pipeline = DiffusionPipeline.from_pretrained(model_dir, dtype=dtype)
    if not isinstance(pipeline, UniFlowClassConditionalPipeline):
        raise ValueError(f"{model_dir} holds a {type(pipeline).__name__}, not a UniFlowClassConditionalPipeline.")
    return pipeline


def load_reconstruction_pipeline(model_dir: str | os.PathLike, dtype=None):
    """A `UniFlowReconstructionPipeline` of the tokenizer and image processor of a pipeline folder or a UniFlow model
    folder (ours or an official release), as `evaluation.load_tokenizer` finds them."""
    from ..evaluation import load_tokenizer
    from ..pipelines import UniFlowReconstructionPipeline

    tokenizer, image_processor = load_tokenizer(str(model_dir), **({} if dtype is None else {"dtype": dtype}))
    return UniFlowReconstructionPipeline(tokenizer=tokenizer, image_processor=image_processor)


def image_grid(images: list, max_columns: int = 8):
    """`images` in rows of at most `max_columns`, the last row filled with black."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    columns = min(len(images), max_columns)
    rows = -(-len(images) // columns)
    blank = Image.new(images[0].mode, images[0].size)
    return make_image_grid(list(images) + [blank] * (rows * columns - len(images)), rows=rows, cols=columns)


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
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from ..metrics import peak_signal_noise_ratio, structural_similarity

    check_output_dir(args.output_dir)
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"No such image file(s): {', '.join(missing)}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    device = resolve_device_argument(args)
    dtype = resolve_dtype_argument(args, device)
    pipeline = load_reconstruction_pipeline(args.model or FMNIST_MODEL_PATH, dtype=dtype).to(device)
    processor, inputs, reconstructions = pipeline.processor, [], []
    with tqdm(total=len(args.images), unit="image") as bar:  # image i decodes with seed + i, whatever the batches
        for start in range(0, len(args.images), args.batch_size):
            batch = [Image.open(path).convert("RGB") for path in args.images[start : start + args.batch_size]]
            generators = [torch.Generator().manual_seed(args.seed + start + i) for i in range(len(batch))]
            decoded = pipeline(batch, num_inference_steps=args.steps, generator=generators, output_type="pt")
            reconstructions.append(decoded.images.to("cpu", torch.float32))
            inputs.append(processor.postprocess(processor(batch, return_tensors="pt").pixel_values, output_type="pt"))
            bar.update(len(batch))
    inputs, reconstructions = torch.cat(inputs), torch.cat(reconstructions)
    psnr = peak_signal_noise_ratio(reconstructions, inputs).tolist()
    ssim = structural_similarity(reconstructions, inputs).tolist()

    stems = [os.path.splitext(os.path.basename(path))[0] for path in args.images]
    if len(set(stems)) < len(stems):
        stems = [f"{i:04d}_{stem}" for i, stem in enumerate(stems)]
    os.makedirs(args.output_dir, exist_ok=True)
    originals, decoded = (pipeline.numpy_to_pil(x.permute(0, 2, 3, 1).numpy()) for x in (inputs, reconstructions))
    for i, path in enumerate(args.images):
        out_path = os.path.join(args.output_dir, f"{stems[i]}_reconstruction.png")
        image_grid([originals[i], decoded[i]]).save(out_path)
        print(f"{path}: PSNR {psnr[i]:.2f} dB  SSIM {ssim[i]:.4f}  -> {out_path}")
    print(f"mean over {len(psnr)} image(s): PSNR {sum(psnr) / len(psnr):.2f} dB  SSIM {sum(ssim) / len(ssim):.4f}")
    return 0


def run_attach_guide(args) -> int:
    from ..generator_training import attach_guide

    check_output_dir(args.output_dir)
    pipeline, guide = (load_class_conditional_pipeline(folder) for folder in (args.model, args.guide))
    attach_guide(pipeline, guide, args.autoguidance_scale, args.autoguidance_interval).save_pretrained(args.output_dir)
    print(f"Saved the pipeline with its guide ({guide.transformer.config.num_layers} blocks) to {args.output_dir}")
    return 0


def run_set_defaults(args) -> int:
    changes = sampling_arguments(args)
    if not changes:
        raise ValueError(f"Nothing to set: pass at least one of {', '.join(SAMPLING_OPTIONS.values())}.")
    check_output_dir(args.output_dir)
    pipeline = load_class_conditional_pipeline(args.model)
    pipeline = type(pipeline)(**pipeline.components, **{**pipeline.settings, **changes})  # whose __init__ checks them
    pipeline.save_pretrained(args.output_dir)
    print(f"Saved the pipeline to {args.output_dir} with " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    return 0
