"""`uniflow-hf fmnist ...`: the UniFlow-FMNIST recipe, stage by stage (fixed seeds)."""

from __future__ import annotations

from .generate import (
    add_guidance_arguments,
    add_init_generator_arguments,
    add_lr_schedule_arguments,
    add_solver_arguments,
    add_transformer_kwargs_argument,
    add_training_timestep_arguments,
    training_noise_scheduler,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("fmnist")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)

    stage = stages.add_parser("pretrain-encoder", help="a. train a small UniFlow encoder as a Fashion-MNIST classifier")
    stage.add_argument("--output-dir", required=True)
    stage.add_argument("--epochs", type=float, default=1.0)
    stage.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    stage.add_argument("--seed", type=int, default=0)
    stage.set_defaults(func=_pretrain)

    stage = stages.add_parser("adapt", help="b. UniFlow-adapt the pretrained encoder (distillation + patch flow decoder)")
    stage.add_argument("--encoder", required=True, help="output folder of `pretrain-encoder`")
    stage.add_argument("--output-dir", required=True)
    stage.add_argument("--epochs", type=float, default=1.0)
    stage.add_argument("--max-train", type=int, default=None)
    stage.add_argument("--distillation-mode", default="adaptive", choices=["adaptive", "uniform", "none"])
    stage.add_argument("--freeze-encoder", action="store_true")
    stage.add_argument("--init-tokenizer", default=None, help="continue from this adapted tokenizer (same teacher)")
    stage.add_argument("--learning-rate", type=float, default=1e-3)
    _add_flow_timestep_arguments(stage)
    stage.add_argument("--seed", type=int, default=0)
    stage.set_defaults(func=_adapt)

    stage = stages.add_parser(
        "finetune-decoder", help="b'. train only the decoder of an adapted tokenizer (encoder and latents unchanged)"
    )
    stage.add_argument("--tokenizer", required=True, help="output folder of `adapt`")
    stage.add_argument("--output-dir", required=True)
    stage.add_argument("--epochs", type=float, default=1.0)
    stage.add_argument("--max-train", type=int, default=None)
    stage.add_argument("--learning-rate", type=float, default=5e-4)
    _add_flow_timestep_arguments(stage)
    stage.add_argument("--seed", type=int, default=0)
    stage.set_defaults(func=_finetune_decoder)

    stage = stages.add_parser("train-generator", help="c. class-conditional latent generator -> a pipeline folder")
    stage.add_argument("--tokenizer", required=True, help="output folder of `adapt`")
    stage.add_argument("--output-dir", required=True)
    stage.add_argument("--steps", type=int, default=7000)
    stage.add_argument("--batch-size", type=int, default=128)
    stage.add_argument("--learning-rate", type=float, default=5e-4)
    add_lr_schedule_arguments(stage)
    add_transformer_kwargs_argument(stage)
    add_init_generator_arguments(stage)
    stage.add_argument("--max-train", type=int, default=None)
    stage.add_argument(
        "--decoder-steps", type=int, default=None,
        help="the pipeline's default steps of the pixel decoder when generating (default: the tokenizer's, 1)",
    )
    stage.add_argument(
        "--ema-decay", type=float, default=None, help="save an exponential moving average of the weights (e.g. 0.999)"
    )
    add_solver_arguments(stage)
    add_guidance_arguments(stage, "the pipeline's default classifier-free guidance (default: 1.5)")
    add_training_timestep_arguments(stage)
    stage.add_argument("--seed", type=int, default=0)
    stage.set_defaults(func=_generator)


def _add_flow_timestep_arguments(stage) -> None:
    from ..modeling.configuration_uniflow import FLOW_TIMESTEP_DISTRIBUTIONS

    stage.add_argument(
        "--flow-timestep-distribution", default=None, choices=FLOW_TIMESTEP_DISTRIBUTIONS,
        help="training times of the flow loss (default: the tokenizer's config; 'fat_lognormal' for a new one)",
    )
    stage.add_argument("--flow-timestep-logit-mean", type=float, default=None, help="logit-normal mean (< 0: nearer the noise)")
    stage.add_argument("--flow-timestep-logit-std", type=float, default=None)


def _flow_timestep_overrides(args) -> dict:
    values = {
        "flow_timestep_distribution": args.flow_timestep_distribution,
        "flow_timestep_logit_mean": args.flow_timestep_logit_mean,
        "flow_timestep_logit_std": args.flow_timestep_logit_std,
    }
    return {name: value for name, value in values.items() if value is not None}


def _pretrain(args) -> int:
    from ..recipes.fmnist import pretrain_encoder

    pretrain_encoder(args.output_dir, epochs=args.epochs, max_train=args.max_train, seed=args.seed)
    return 0


def _adapt(args) -> int:
    from ..recipes.fmnist import adapt_tokenizer

    adapt_tokenizer(
        args.encoder, args.output_dir, epochs=args.epochs, max_train=args.max_train, seed=args.seed,
        distillation_mode=args.distillation_mode, freeze_encoder=args.freeze_encoder,
        init_tokenizer=args.init_tokenizer, learning_rate=args.learning_rate,
        config_overrides=_flow_timestep_overrides(args),
    )
    return 0


def _finetune_decoder(args) -> int:
    from ..recipes.fmnist import finetune_decoder

    finetune_decoder(
        args.tokenizer, args.output_dir, epochs=args.epochs, max_train=args.max_train, seed=args.seed,
        learning_rate=args.learning_rate, config_overrides=_flow_timestep_overrides(args),
    )
    return 0


def _generator(args) -> int:
    from ..recipes.fmnist import train_fmnist_generator

    train_fmnist_generator(
        args.tokenizer, args.output_dir, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
        max_train=args.max_train, decoder_num_inference_steps=args.decoder_steps, ema_decay=args.ema_decay,
        solver=args.solver, euler_at_final=args.euler_at_final, learning_rate=args.learning_rate,
        init_generator=args.init_generator, add_layers=args.add_layers, guidance_scale=args.guidance_scale,
        guidance_interval=args.guidance_interval, guidance_rescale=args.guidance_rescale,
        lr_scheduler_type=args.lr_scheduler_type, warmup_steps=args.warmup_steps,
        noise_scheduler=training_noise_scheduler(args), transformer_kwargs=args.transformer_kwargs,
    )
    return 0
