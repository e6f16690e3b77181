"""`uniflow-hf evaluate`: PSNR, SSIM and rFID of a UniFlow tokenizer's reconstructions, as JSON. Under `torchrun` or
`accelerate launch` (`-m uniflow_hf.cli evaluate ...`) the images are split between the processes; the first one
prints and writes the results."""

from __future__ import annotations

import json
import os

from ..io import check_output_dir
from .generate import add_device_arguments, resolve_device_argument, resolve_dtype_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate")
    parser.add_argument("--model", required=True, help="a UniFlowModel folder, or a pipeline folder (with tokenizer/)")
    parser.add_argument("--dataset", required=True, help="an image folder, or a dataset saved with save_to_disk")
    parser.add_argument("--split", default="test", help="the split of a saved DatasetDict (default: test)")
    parser.add_argument("--image-column", default=None, help="the image column of a dataset (default: the first)")
    parser.add_argument("--resolution", type=int, default=None, help="square size (default: the processor's crop)")
    parser.add_argument("--steps", type=int, default=None, help="decoder steps (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward, per process")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    parser.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth: also compute rFID")
    parser.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of the Linear layers (CPU)")
    parser.add_argument("--seed", type=int, default=0, help="the decoder noise of image i uses seed + i")
    parser.add_argument("--skip-unreadable", action="store_true", help="skip (and list) unreadable images")
    parser.add_argument("--output", default=None, help="write the results to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_arguments(parser)
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    import torch
    from accelerate import Accelerator

    from ..evaluation import evaluate_reconstruction, load_tokenizer, open_image_source, quantize_dynamic_int8
    from ..metrics import FIDInceptionV3

    if args.int8 and args.dtype not in ("auto", "float32"):
        raise ValueError(f"--int8 quantises float32 layers: it takes --dtype auto or float32, not {args.dtype}.")
    if args.output is not None:
        check_output_dir(os.path.dirname(os.path.abspath(args.output)), "--output")
    device = None if args.device is None else resolve_device_argument(args)
    if args.int8 and device is not None and device.type != "cpu":
        raise ValueError(f"--int8 quantisation runs on the CPU only: it takes no --device {args.device}.")
    accelerator = Accelerator(cpu=args.int8 or (device is not None and device.type == "cpu"))
    if device is None or (device.type == accelerator.device.type and device.index is None):
        device = accelerator.device  # under a launcher: this process's own GPU
    dtype = torch.float32 if args.int8 else resolve_dtype_argument(args, device)
    model, processor = load_tokenizer(args.model, dtype=dtype)
    model = (quantize_dynamic_int8(model) if args.int8 else model).to(device)
    inception = None
    if args.inception_weights is not None:
        inception = FIDInceptionV3.from_weights_file(args.inception_weights, device)
    results = evaluate_reconstruction(
        model, open_image_source(args.dataset, args.split, args.image_column), processor,
        resolution=args.resolution, num_inference_steps=args.steps, batch_size=args.batch_size,
        max_images=args.max_images, inception=inception, seed=args.seed, skip_unreadable=args.skip_unreadable,
        accelerator=accelerator, progress=not args.no_progress,
    )
    if results["process_index"] == 0:  # the rank in the default process group, which split the images
        split = args.split if os.path.isfile(os.path.join(args.dataset, "dataset_dict.json")) else None
        run = dict(model=os.path.abspath(args.model), dataset=os.path.abspath(args.dataset), split=split)
        run.update(inception_weights=args.inception_weights, int8=args.int8, device=str(device))
        text = json.dumps({**run, "dtype": str(dtype).removeprefix("torch."), **results}, indent=2)
        print(text)
        if args.output:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 0
