"""The `uniflow-hf` console script (its start without heavy imports, every command's parser) and the commands on the
tiny pipelines: generate, attach-guide, set-defaults, reconstruct."""

import os
import subprocess
import sys
from unittest import mock

import pytest

import numpy as np
import torch
from PIL import Image

from uniflow_hf import UniFlowClassConditionalPipeline
from conftest import generators, random_images, tiny_transformer
from uniflow_hf.cli import main as cli_main
from uniflow_hf_cli import COMMANDS, build_parser


# The commands' options for the tests that compare their output with the pipelines' float32 CPU output: on any host
# (a GPU, a CPU where `--dtype auto` picks bfloat16) the commands then compute what the comparison expects.
CPU_FLOAT32 = ["--device", "cpu", "--dtype", "float32"]
HEAVY_MODULES = ("torch", "transformers", "diffusers", "accelerate", "datasets", "peft", "uniflow_hf")


def test_help_imports_nothing_heavy():
    """`uniflow-hf --help` (and an unknown command's error) lists every command without importing torch,
    transformers, diffusers or `uniflow_hf` itself, whose import registers our classes with them."""
    script = (
        "import sys, uniflow_hf_cli\n"
        "for argv in (['--help'], ['no-such-command']):\n"
        "    try:\n"
        "        uniflow_hf_cli.main(argv)\n"
        "    except SystemExit as exit:\n"
        "        print('exit', exit.code)\n"
        f"print('heavy', sorted({{name.split('.')[0] for name in sys.modules}} & set({HEAVY_MODULES!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "heavy []" in result.stdout
    assert result.stdout.count("exit 0") == 1 and "exit 2" in result.stdout
    for name in COMMANDS:
        assert f"    {name}" in result.stdout
    assert "invalid choice: 'no-such-command'" in result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_parses(command, capsys):
    """Each listed command is registered by the module the list names, with a handler and a `--help`; and the module
    registers no command that the list (and so `--help`) leaves out."""
    parser = build_parser(command)
    choices = parser._subparsers._group_actions[0].choices
    assert set(choices) <= set(COMMANDS)
    command_parser = choices[command]
    if command_parser._subparsers is None:
        assert command_parser.get_default("func") is not None
    else:  # `fmnist STAGE`: each stage has its handler
        stages = command_parser._subparsers._group_actions[0].choices
        assert stages and all(stage.get_default("func") is not None for stage in stages.values())
    with pytest.raises(SystemExit) as exit:
        parser.parse_args([command, "--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: uniflow-hf {command} [-h]")


def test_no_command_prints_the_list(capsys):
    assert cli_main([]) == 2
    printed = capsys.readouterr().out
    assert all(f"    {name}" in printed for name in COMMANDS)


def test_generate_command(class_conditional_pipeline, tmp_path, capsys):
    model_dir, output_dir = tmp_path / "model", tmp_path / "images"
    class_conditional_pipeline.save_pretrained(model_dir)
    argv = ["generate", *CPU_FLOAT32, "--label", "square", "--num-images", "3", "--seed", "7", "--steps", "2"]
    assert cli_main([*argv, "--model", str(model_dir), "--output-dir", str(output_dir)]) == 0
    files = sorted(os.listdir(output_dir))
    assert files == ["square_0007.png", "square_0008.png", "square_0009.png", "square_grid.png"]
    expected = class_conditional_pipeline(
        [1] * 3, num_inference_steps=2, generator=generators([7, 8, 9]), output_type="np"
    ).images
    written = np.stack([np.asarray(Image.open(output_dir / name)) for name in files[:3]])
    assert np.array_equal(written, np.round(expected * 255).astype(np.uint8))
    assert Image.open(output_dir / "square_grid.png").size == (96, 32)

    by_id = ["generate", *CPU_FLOAT32, "--label", "2", "--num-images", "1", "--steps", "1",
             "--model", str(model_dir)]
    assert cli_main([*by_id, "--output-dir", str(output_dir)]) == 0
    assert (output_dir / "stripes_0000.png").is_file()
    interval = ["--guidance-scale", "3", "--guidance-interval", "0.5", "1", "--output-dir", str(tmp_path / "interval")]
    assert cli_main([*by_id, *interval]) == 0
    expected = class_conditional_pipeline(
        [2], num_inference_steps=1, guidance_scale=3.0, guidance_interval=(0.5, 1.0), generator=generators([0]),
        output_type="np",
    ).images  # one step at t = 0: outside the interval, so unguided
    written = np.asarray(Image.open(tmp_path / "interval" / "stripes_0000.png"))
    assert np.array_equal(written, np.round(expected[0] * 255).astype(np.uint8))
    assert not np.array_equal(written, np.asarray(Image.open(output_dir / "stripes_0000.png")))  # guided: 1.5
    rescaled = ["--steps", "2", "--guidance-scale", "3", "--guidance-rescale", "0.7", "--output-dir", str(tmp_path / "rs")]
    assert cli_main([*by_id[:-4], "--model", str(model_dir), *rescaled]) == 0
    expected = class_conditional_pipeline(
        [2], num_inference_steps=2, guidance_scale=3.0, guidance_rescale=0.7, generator=generators([0]), output_type="np"
    ).images
    written = np.asarray(Image.open(tmp_path / "rs" / "stripes_0000.png"))
    assert np.array_equal(written, np.round(expected[0] * 255).astype(np.uint8))
    assert cli_main(["generate", "--label", "hexagon", "--model", str(model_dir), "--output-dir", str(output_dir)]) == 2
    assert "Known names: 'circle', 'square', 'stripes'" in capsys.readouterr().err


def test_attach_guide_command(class_conditional_pipeline, tmp_path, capsys):
    """`attach-guide` saves the pipeline with the guide's DiT and the autoguidance default; `generate` uses it. A guide
    trained on other latents (other statistics) is refused."""
    pipeline = class_conditional_pipeline
    guide = UniFlowClassConditionalPipeline(
        **{**pipeline.components, "transformer": tiny_transformer(pipeline.tokenizer.config, seed=1)},
        **{key: pipeline.config[key] for key in ("id2label", "latent_mean", "latent_std")},
    )
    pipeline.save_pretrained(tmp_path / "model")
    guide.save_pretrained(tmp_path / "guide")
    argv = ["attach-guide", "--model", str(tmp_path / "model"), "--guide", str(tmp_path / "guide"),
            "--autoguidance-scale", "2", "--autoguidance-interval", "0.5", "1"]
    assert cli_main([*argv, "--output-dir", str(tmp_path / "guided")]) == 0
    guided = UniFlowClassConditionalPipeline.from_pretrained(tmp_path / "guided")
    assert guided.sampling_setting("autoguidance_scale") == 2.0 and guided.sampling_setting("autoguidance_interval") == [0.5, 1.0]
    assert torch.equal(guided.guide_transformer.pos_embed.proj.weight, guide.transformer.pos_embed.proj.weight)
    assert torch.equal(guided.transformer.pos_embed.proj.weight, pipeline.transformer.pos_embed.proj.weight)

    generate = ["generate", *CPU_FLOAT32, "--label", "square", "--num-images", "1", "--steps", "4",
                "--model", str(tmp_path / "guided")]
    assert cli_main([*generate, "--output-dir", str(tmp_path / "images")]) == 0
    expected = guided([1], num_inference_steps=4, generator=generators([0]), output_type="np").images
    written = np.asarray(Image.open(tmp_path / "images" / "square_0000.png"))
    assert np.array_equal(written, np.round(expected[0] * 255).astype(np.uint8))
    assert cli_main([*generate, "--autoguidance-scale", "1", "--output-dir", str(tmp_path / "plain")]) == 0
    assert not np.array_equal(written, np.asarray(Image.open(tmp_path / "plain" / "square_0000.png")))

    guide.register_to_config(latent_std=[2 * value for value in guide.config.latent_std])
    guide.save_pretrained(tmp_path / "other-latents")
    argv[4] = str(tmp_path / "other-latents")
    assert cli_main([*argv, "--output-dir", str(tmp_path / "refused")]) == 2
    assert "The guide was not trained on this pipeline's latents: its `latent_std`" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_set_defaults_command(class_conditional_pipeline, tmp_path, capsys):
    """`set-defaults` saves the pipeline with the given sampling defaults and the rest unchanged (weights, other
    settings); `generate` then uses them. Without any setting, or with a bad one, nothing is written."""
    pipeline = class_conditional_pipeline
    pipeline.save_pretrained(tmp_path / "model")
    argv = ["set-defaults", "--model", str(tmp_path / "model")]
    changed = ["--guidance-scale", "2.5", "--guidance-interval", "0.2", "0.8", "--decoder-steps", "3",
               "--decoder-latent-scale", "1.25"]
    assert cli_main([*argv, *changed, "--output-dir", str(tmp_path / "new")]) == 0
    new = UniFlowClassConditionalPipeline.from_pretrained(tmp_path / "new")
    assert new.settings == {**pipeline.settings, "guidance_scale": 2.5, "guidance_interval": [0.2, 0.8],
                            "decoder_num_inference_steps": 3, "decoder_latent_scale": 1.25}
    assert torch.equal(new.transformer.pos_embed.proj.weight, pipeline.transformer.pos_embed.proj.weight)

    generate = ["generate", *CPU_FLOAT32, "--label", "square", "--num-images", "1", "--steps", "2",
                "--model", str(tmp_path / "new")]
    assert cli_main([*generate, "--output-dir", str(tmp_path / "images")]) == 0
    expected = pipeline([1], num_inference_steps=2, guidance_scale=2.5, guidance_interval=(0.2, 0.8),
                        decoder_num_inference_steps=3, decoder_latent_scale=1.25, generator=generators([0]),
                        output_type="np").images
    written = np.asarray(Image.open(tmp_path / "images" / "square_0000.png"))
    assert np.array_equal(written, np.round(expected[0] * 255).astype(np.uint8))
    assert cli_main([*generate, "--decoder-latent-scale", "1", "--output-dir", str(tmp_path / "unscaled")]) == 0
    assert not np.array_equal(written, np.asarray(Image.open(tmp_path / "unscaled" / "square_0000.png")))

    capsys.readouterr()
    assert cli_main([*argv, "--output-dir", str(tmp_path / "nothing")]) == 2
    assert "Nothing to set: pass at least one of --decoder-steps, --guidance-scale" in capsys.readouterr().err
    assert cli_main([*argv, "--decoder-latent-scale", "0", "--output-dir", str(tmp_path / "bad")]) == 2
    assert "`decoder_latent_scale` must be a number > 0" in capsys.readouterr().err
    assert cli_main([*argv, "--autoguidance-scale", "2", "--output-dir", str(tmp_path / "no-guide")]) == 2
    assert "needs a `guide_transformer`" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("nothing", "bad", "no-guide"))


def test_reconstruct_command(reconstruction_pipeline, tmp_path, capsys):
    model_dir = tmp_path / "model"
    reconstruction_pipeline.save_pretrained(model_dir)
    paths = []
    for i, array in enumerate(random_images(2, size=(32, 32))):
        paths.append(str(tmp_path / f"input{i}.png"))
        Image.fromarray(array).save(paths[-1])
    argv = ["reconstruct", *paths, "--model", str(model_dir), "--output-dir", str(tmp_path / "out"), "--steps", "2",
            *CPU_FLOAT32]
    assert cli_main([*argv, "--batch-size", "1"]) == 0
    printed = capsys.readouterr()
    assert printed.out.count("PSNR") == 3 and "SSIM" in printed.out and "mean over 2 image(s)" in printed.out
    # one progress bar over both images (batches of 1), not one bar of decoder steps per batch
    bars = printed.err.rsplit("Loading", 1)[-1].split("\n", 1)[1]  # after the loading bars
    assert "| 2/2 [" in bars and bars.count("| 0/2 [") == 1 and "image/s" in bars and "it/s" not in bars
    side_by_side = Image.open(tmp_path / "out" / "input0_reconstruction.png")
    assert side_by_side.size == (64, 32)
    assert np.array_equal(np.asarray(side_by_side)[:, :32], np.asarray(Image.open(paths[0])))

    expected = reconstruction_pipeline(
        [Image.open(path) for path in paths], num_inference_steps=2, generator=generators([0, 1]), output_type="pil"
    ).images
    assert np.array_equal(np.asarray(side_by_side)[:, 32:], np.asarray(expected[0]))


def test_commands_without_a_model(tmp_path, capsys):
    from uniflow_hf.commands import generate

    with mock.patch.object(generate, "FMNIST_MODEL_PATH", str(tmp_path / "no-such-model")):
        assert cli_main(["generate", "--label", "0", "--output-dir", str(tmp_path)]) == 2
    assert "The model folder " + str(tmp_path / "no-such-model") + " does not exist" in capsys.readouterr().err
    assert cli_main(["reconstruct", str(tmp_path / "missing.png"), "--output-dir", str(tmp_path)]) == 2
    assert "No such image file" in capsys.readouterr().err


@pytest.mark.parametrize("fast_bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_dtype_auto_follows_the_cpu(reconstruction_pipeline, tmp_path, capsys, fast_bf16, expected):
    """`--dtype auto` (the default) loads the models in bfloat16 on a CPU with native bf16 and float32 elsewhere
    (the capability mocked both ways), and says which and why."""
    from uniflow_hf import hardware
    from uniflow_hf.commands import generate

    reconstruction_pipeline.save_pretrained(tmp_path / "model")
    Image.fromarray(random_images(1, size=(32, 32))[0]).save(tmp_path / "input.png")
    argv = ["reconstruct", str(tmp_path / "input.png"), "--model", str(tmp_path / "model"), "--steps", "1"]
    support = (fast_bf16, "mocked CPU")
    with mock.patch.object(hardware, "cpu_bf16_support", return_value=support), mock.patch.object(
        generate, "load_reconstruction_pipeline", wraps=generate.load_reconstruction_pipeline
    ) as load:
        assert cli_main([*argv, "--output-dir", str(tmp_path / "out")]) == 0
    assert load.call_args.kwargs["dtype"] == expected
    printed = capsys.readouterr()
    assert f"dtype {str(expected).removeprefix('torch.')} (auto: mocked CPU)" in printed.err
    assert "PSNR" in printed.out


def test_dtype_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["reconstruct", "x.png", "--output-dir", str(tmp_path), "--dtype", "float64"])
    assert "invalid choice: 'float64'" in capsys.readouterr().err
    argv = ["evaluate", "--model", str(tmp_path), "--dataset", str(tmp_path), "--int8", "--dtype", "bfloat16"]
    assert cli_main(argv) == 2
    assert "--int8 quantises float32 layers" in capsys.readouterr().err


@pytest.fixture
def cuda_looks_available(monkeypatch):
    """CUDA as a GPU machine shows it (Accelerate's device `cuda`, a bf16-capable device) on an AVX2-like CPU, with
    `DiffusionPipeline.to` recorded rather than run: the commands' device and dtype choice, without a GPU."""
    import accelerate
    from diffusers import DiffusionPipeline
    from uniflow_hf import hardware

    monkeypatch.setattr(accelerate, "PartialState", lambda: mock.Mock(device=torch.device("cuda")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Test GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(hardware, "cpu_bf16_support", lambda: (False, "mocked CPU without bf16"))
    with mock.patch.object(DiffusionPipeline, "to", autospec=True, side_effect=lambda self, *args: self) as moves:
        yield moves


@pytest.mark.parametrize("command", ["generate", "reconstruct"])
def test_commands_run_on_accelerates_device(command, class_conditional_pipeline, tmp_path, capsys,
                                            cuda_looks_available):
    """`generate` and `reconstruct` move the pipeline to Accelerate's device (CUDA when present) with `--dtype auto`
    resolved for that device; `--device cpu` keeps them on the CPU, the dtype resolved for the CPU."""
    from uniflow_hf.commands import generate

    class_conditional_pipeline.save_pretrained(tmp_path / "model")
    Image.fromarray(random_images(1, size=(32, 32))[0]).save(tmp_path / "input.png")
    inputs = ["--label", "square", "--num-images", "1"] if command == "generate" else [str(tmp_path / "input.png")]
    argv = [command, *inputs, "--model", str(tmp_path / "model"), "--steps", "1", "--output-dir", str(tmp_path / "out")]
    loader = "load_class_conditional_pipeline" if command == "generate" else "load_reconstruction_pipeline"
    for device_argv, device, dtype in [([], "cuda", torch.bfloat16), (["--device", "cpu"], "cpu", torch.float32)]:
        with mock.patch.object(generate, loader, wraps=getattr(generate, loader)) as load:
            assert cli_main([*argv, *device_argv]) == 0
        assert load.call_args.kwargs["dtype"] == dtype
        assert cuda_looks_available.call_args.args[1:] == (torch.device(device),)
        dtype_name = str(dtype).removeprefix("torch.")
        assert f"uniflow-hf {command}: device {device}, dtype {dtype_name} (auto: " in capsys.readouterr().err


def test_device_argument_errors(tmp_path, capsys):
    """A `--device` that is not a device, or not on this machine, is refused before any model is loaded."""
    argv = ["generate", "--label", "0", "--model", str(tmp_path / "no-such-model"), "--output-dir", str(tmp_path)]
    assert cli_main([*argv, "--device", "gpu0"]) == 2
    assert "--device 'gpu0' is not a device: use cpu, cuda, cuda:N" in capsys.readouterr().err
    with mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert cli_main([*argv, "--device", "cuda"]) == 2
    assert "--device cuda: this machine has no cuda device (use --device cpu)." in capsys.readouterr().err
    with mock.patch.object(torch.cuda, "is_available", return_value=True), mock.patch.object(
        torch.cuda, "device_count", return_value=1
    ):
        assert cli_main([*argv, "--device", "cuda:3"]) == 2
    assert "--device cuda:3: this machine has 1 CUDA device(s)." in capsys.readouterr().err
    evaluate = ["evaluate", "--model", str(tmp_path), "--dataset", str(tmp_path), "--int8", "--device", "cuda"]
    with mock.patch.object(torch.cuda, "is_available", return_value=True):
        assert cli_main(evaluate) == 2
    assert "--int8 quantisation runs on the CPU only: it takes no --device cuda." in capsys.readouterr().err


def test_output_paths_are_checked_before_loading(tmp_path, capsys):
    """An output path below a regular file is refused before any model or image is loaded (the model folder here
    does not exist, so any loading would fail with another message), and the file is left as it was."""
    a_file = tmp_path / "afile.txt"
    a_file.write_text("not a folder")
    image = tmp_path / "image.png"
    Image.new("L", (28, 28)).save(image)
    model = ["--model", str(tmp_path / "no-such-model")]
    commands = [
        ["generate", "--label", "0", *model, "--output-dir", str(a_file / "out")],
        ["reconstruct", str(image), *model, "--output-dir", str(a_file / "out")],
        ["attach-guide", *model, "--guide", str(tmp_path), "--autoguidance-scale", "2",
         "--output-dir", str(a_file / "out")],
        ["set-defaults", *model, "--guidance-scale", "2", "--output-dir", str(a_file / "out")],
    ]
    for argv in commands:
        assert cli_main(argv) == 2, argv
        assert f"--output-dir {a_file / 'out'} lies below {a_file}, which is a file" in capsys.readouterr().err
    evaluate = ["evaluate", *model, "--dataset", str(tmp_path), "--output", str(a_file / "results.json")]
    assert cli_main(evaluate) == 2
    assert f"--output {a_file} is a file, not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "not a folder"


def test_convert_command(official_tiny_dir, tmp_path, capsys):
    """`uniflow-hf convert` and the conversion script's own `main` take the same options and write the same folder;
    a folder that is not a release is refused with the reason."""
    from safetensors.torch import load_file

    from uniflow_hf.conversion_scripts.convert_uniflow_original_to_hf import main as script_main

    argv = ["--input", str(official_tiny_dir), "--dtype", "bfloat16", "--verify"]
    assert cli_main(["convert", *argv, "--output", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert f"converted {official_tiny_dir} -> {tmp_path / 'cli'}" in printed
    assert "latents: max abs difference" in printed and "reconstruction: max abs difference" in printed
    assert script_main([*argv, "--output", str(tmp_path / "script")]) == 0
    by_cli, by_script = (load_file(tmp_path / name / "model.safetensors") for name in ("cli", "script"))
    assert by_cli.keys() == by_script.keys() and all(torch.equal(by_cli[k], by_script[k]) for k in by_cli)
    assert {tensor.dtype for tensor in by_cli.values()} == {torch.bfloat16}

    assert cli_main(["convert", "--input", str(tmp_path / "cli" / "no-such"), "--output", str(tmp_path / "x")]) == 2
    assert "has no config.json: expected an official UniFlow release folder" in capsys.readouterr().err
