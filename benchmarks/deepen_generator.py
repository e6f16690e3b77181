"""The deeper-DiT experiment of fmnist_experiments.md (v9's DiT deepened from 6 to 9 blocks): write a copy of a
class-conditional pipeline whose DiT has `--add-layers` more blocks that start as the identity, so that the deeper
DiT generates exactly what the saved one does until training opens them. Continue training it with
`uniflow-hf train-generator --init-generator OUTPUT ...`.

Each new block is a copy of the block before it with its two adaLN-Zero gates zeroed (the 3rd and 6th sixths of its
modulation: shift, scale, gate of the attention, then of the MLP); the copies follow evenly spaced blocks (6 blocks
and 3 new ones: after the 2nd, 4th and 6th).

    python benchmarks/deepen_generator.py PIPELINE_DIR OUTPUT_DIR --add-layers 3
"""

from __future__ import annotations

import argparse

import torch
from diffusers import DiTTransformer2DModel


def deepen_generator_transformer(transformer: DiTTransformer2DModel, num_new_layers: int) -> DiTTransformer2DModel:
    """A DiT `num_new_layers` blocks deeper that computes what `transformer` computes (left unchanged)."""
    num_layers, dim = transformer.config.num_layers, transformer.inner_dim
    if not 0 < num_new_layers <= num_layers:
        raise ValueError(f"--add-layers must be 1 to {num_layers} (a new block after each one), got {num_new_layers}.")
    copied = {round((j + 1) * num_layers / num_new_layers) - 1 for j in range(num_new_layers)}
    state = {key: value for key, value in transformer.state_dict().items() if not key.startswith("transformer_blocks.")}
    position = 0
    for index, block in enumerate(transformer.transformer_blocks):
        for is_copy in (False, True) if index in copied else (False,):
            block_state = {key: value.clone() for key, value in block.state_dict().items()}
            if is_copy:
                for name in ("weight", "bias"):
                    block_state[f"norm1.linear.{name}"][2 * dim : 3 * dim] = 0
                    block_state[f"norm1.linear.{name}"][5 * dim : 6 * dim] = 0
            state.update({f"transformer_blocks.{position}.{key}": value for key, value in block_state.items()})
            position += 1
    deeper = DiTTransformer2DModel.from_config({**transformer.config, "num_layers": num_layers + num_new_layers})
    deeper.load_state_dict(state)
    deeper.to(transformer.device)
    return deeper if deeper.dtype == transformer.dtype else deeper.to(dtype=transformer.dtype)


def main() -> None:
    from uniflow_hf import UniFlowClassConditionalPipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="a UniFlowClassConditionalPipeline folder")
    parser.add_argument("output", help="where to write the pipeline with the deeper DiT")
    parser.add_argument("--add-layers", type=int, required=True, help="new blocks, at most the DiT's number of blocks")
    args = parser.parse_args()
    pipeline = UniFlowClassConditionalPipeline.from_pretrained(args.pipeline)
    components = {name: module for name, module in pipeline.components.items() if name != "transformer"}
    deeper = deepen_generator_transformer(pipeline.transformer, args.add_layers)
    UniFlowClassConditionalPipeline(**components, transformer=deeper, **pipeline.settings).save_pretrained(args.output)
    with torch.no_grad():  # the check the experiment relies on: the same velocity before any training
        sample = torch.randn(2, deeper.config.in_channels, deeper.config.sample_size, deeper.config.sample_size)
        null_class = deeper.config.num_embeds_ada_norm
        inputs = dict(timestep=torch.tensor([250.0, 750.0]), class_labels=torch.tensor([0, null_class]))
        difference = (deeper(sample, **inputs).sample - pipeline.transformer(sample, **inputs).sample).abs().max()
    print(f"{args.output}: {deeper.config.num_layers} blocks; largest velocity difference {difference.item():.2e}")


if __name__ == "__main__":
    main()
