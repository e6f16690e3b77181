"""The diffusers converter (`convert_uniflow_to_diffusers`): official folder <-> pipeline round trips, the guide and
the sampling defaults carried along, errors."""

import json
import os
import runpy
import sys
from unittest import mock

import pytest
import torch
from diffusers import DiffusionPipeline

from uniflow_hf import UniFlowClassConditionalPipeline, UniFlowImageProcessor, UniFlowModel
from conftest import ID2LABEL


CONVERTER = "uniflow_hf.conversion_scripts.convert_uniflow_to_diffusers"


def run_converter(argv, how):
    """Run the converter as `python -m` or as a file would (runpy, in this process)."""
    with mock.patch.object(sys, "argv", ["convert_uniflow_to_diffusers.py", *argv]):
        with pytest.raises(SystemExit) as exit_info:
            if how == "module":
                runpy.run_module(CONVERTER, run_name="__main__", alter_sys=True)
            else:
                import uniflow_hf.conversion_scripts as scripts

                script = os.path.join(os.path.dirname(scripts.__file__), "convert_uniflow_to_diffusers.py")
                runpy.run_path(script, run_name="__main__")
    return exit_info.value.code


def test_converter_round_trip(official_tiny_dir, tmp_path):
    pipeline_dir, plain_dir = tmp_path / "pipeline", tmp_path / "plain"
    assert run_converter(["--input", str(official_tiny_dir), "--output", str(pipeline_dir)], "module") == 0
    model_index = json.loads((pipeline_dir / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_uniflow_reconstruction", "UniFlowReconstructionPipeline"]
    assert model_index["image_processor"] == ["image_processing_uniflow", "UniFlowImageProcessor"]
    assert run_converter(["--reverse", "--input", str(pipeline_dir), "--output", str(plain_dir)], "file") == 0

    official = UniFlowModel.from_pretrained(official_tiny_dir)
    round_tripped = UniFlowModel.from_pretrained(plain_dir)
    official_state, round_tripped_state = official.state_dict(), round_tripped.state_dict()
    assert official_state.keys() == round_tripped_state.keys()
    assert all(torch.equal(official_state[key], round_tripped_state[key]) for key in official_state)
    assert UniFlowImageProcessor.from_pretrained(plain_dir).crop_size["height"] == 32


def test_converter_class_conditional_round_trip(class_conditional_pipeline, tmp_path):
    from uniflow_hf.conversion_scripts.convert_uniflow_to_diffusers import main

    pipeline_dir = tmp_path / "pipeline"
    class_conditional_pipeline.save_pretrained(pipeline_dir)
    plain_dir, generator_dir, rebuilt_dir = tmp_path / "plain", tmp_path / "generator", tmp_path / "rebuilt"
    reverse = ["--reverse", "--input", str(pipeline_dir), "--output", str(plain_dir), "--generator", str(generator_dir)]
    assert main(reverse) == 0
    assert main(["--input", str(plain_dir), "--generator", str(generator_dir), "--output", str(rebuilt_dir)]) == 0

    rebuilt = DiffusionPipeline.from_pretrained(rebuilt_dir)
    assert isinstance(rebuilt, UniFlowClassConditionalPipeline) and rebuilt.config.id2label == ID2LABEL
    rebuilt.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, output_type="pt")
    assert torch.equal(
        rebuilt([0, 2], generator=torch.manual_seed(0), **kwargs).images,
        class_conditional_pipeline([0, 2], generator=torch.manual_seed(0), **kwargs).images,
    )


def test_converter_keeps_the_guide_and_the_sampling_defaults(autoguided_pipeline, tmp_path):
    from uniflow_hf.conversion_scripts.convert_uniflow_to_diffusers import main

    pipeline = autoguided_pipeline
    pipeline.register_to_config(guidance_scale=2.5, guidance_interval=[0.25, 0.75], decoder_num_inference_steps=2)
    pipeline.save_pretrained(tmp_path / "pipeline")
    plain_dir, generator_dir, rebuilt_dir = tmp_path / "plain", tmp_path / "generator", tmp_path / "rebuilt"
    assert main(["--reverse", "--input", str(tmp_path / "pipeline"), "--output", str(plain_dir),
                 "--generator", str(generator_dir)]) == 0
    assert (generator_dir / "guide_transformer" / "config.json").is_file()
    assert main(["--input", str(plain_dir), "--generator", str(generator_dir), "--output", str(rebuilt_dir)]) == 0

    rebuilt = UniFlowClassConditionalPipeline.from_pretrained(rebuilt_dir)
    rebuilt.set_progress_bar_config(disable=True)
    for key in ("guidance_scale", "guidance_interval", "decoder_num_inference_steps", "autoguidance_scale",
                "autoguidance_interval"):
        assert rebuilt.config[key] == pipeline.config[key], key
    kwargs = dict(num_inference_steps=4, output_type="pt")
    assert torch.equal(
        rebuilt([0, 2], generator=torch.manual_seed(0), **kwargs).images,
        pipeline([0, 2], generator=torch.manual_seed(0), **kwargs).images,
    )


def test_converter_errors(tmp_path, capsys):
    from uniflow_hf.conversion_scripts.convert_uniflow_to_diffusers import main

    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["--reverse", "--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "no model_index.json" in capsys.readouterr().err
