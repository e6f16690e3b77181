"""The shipped UniFlow-FMNIST model and its data: loads offline, generates the requested classes, reconstructs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from uniflow_hf import FMNIST_MODEL_PATH
from uniflow_hf.metrics import peak_signal_noise_ratio
from uniflow_hf.recipes.fmnist import (
    FASHION_MNIST_LABELS,
    fmnist_pixel_values,
    load_fashion_mnist,
    load_fashion_mnist_arrays,
    to_unit_range,
)


SHIPPED = Path(FMNIST_MODEL_PATH)


@pytest.fixture(scope="module")
def pipeline():
    from uniflow_hf.commands.generate import load_class_conditional_pipeline

    pipe = load_class_conditional_pipeline(FMNIST_MODEL_PATH)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def judge():
    """An independent CNN judge, trained here (1 epoch on 10k images, 7 s: 79 % test accuracy; it judges 81 % of the
    shipped model's samples below as their class, 84 % after 20k images, 24 s)."""
    report = load_report_script()  # the judge of benchmarks/fmnist_report.py
    images, labels = load_fashion_mnist_arrays("train")
    images, labels = torch.from_numpy(images[:10000]).float() / 255, torch.from_numpy(labels[:10000])
    judge = report.train_judge(images, labels, epochs=1)
    test_images, test_labels = load_fashion_mnist_arrays("test")
    _, predictions = report.judge_outputs(judge, torch.from_numpy(test_images[:2000]).float() / 255)
    accuracy = (predictions == torch.from_numpy(test_labels[:2000])).float().mean().item()
    assert accuracy > 0.75, f"the judge itself only reaches {accuracy:.2f}"
    return judge


def test_dataset_dict_with_class_names():
    data = load_fashion_mnist(max_per_split=50)
    assert set(data) == {"train", "test"} and len(data["train"]) == 50
    assert data["train"].features["label"].names == FASHION_MNIST_LABELS
    image = data["test"][0]["image"]
    assert image.size == (28, 28) and image.mode == "L"
    full_train, _ = load_fashion_mnist_arrays("train")
    assert full_train.shape == (60000, 28, 28)


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist_arrays("train", root=tmp_path)
    with pytest.raises(ValueError, match="expected 'train' or 'test'"):
        load_fashion_mnist_arrays("validation")


def test_shipped_model_is_small_safetensors_and_complete():
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    index = json.loads((SHIPPED / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_uniflow_class_conditional", "UniFlowClassConditionalPipeline"]
    assert [index["id2label"][str(i)] for i in range(10)] == FASHION_MNIST_LABELS


def test_committed_report_measured_the_shipped_sampling_defaults(pipeline):
    """The report's headline generation row was measured at the settings the shipped pipeline samples with."""
    generation = committed_report()["generation"]
    assert generation["guidance_scale"] == pipeline.sampling_setting("guidance_scale")
    assert generation["guidance_interval"] == list(pipeline.sampling_setting("guidance_interval"))
    assert (generation.get("guidance_rescale") or 0.0) == pipeline.sampling_setting("guidance_rescale")
    assert generation["autoguidance_scale"] == pipeline.sampling_setting("autoguidance_scale")
    assert generation["autoguidance_interval"] == list(pipeline.sampling_setting("autoguidance_interval"))
    assert generation["decoder_steps"] == pipeline.sampling_setting("decoder_num_inference_steps")
    assert (generation.get("decoder_latent_scale") or 1.0) == pipeline.sampling_setting("decoder_latent_scale")
    assert generation["solver"] == pipeline.scheduler.config.solver
    assert generation.get("euler_at_final", False) == pipeline.scheduler.config.euler_at_final


def test_generated_samples_are_recognised_as_their_class(pipeline, judge):
    labels = [name for name in FASHION_MNIST_LABELS for _ in range(10)]
    images = pipeline(labels, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (100, 3, 28, 28) and images.min() >= 0 and images.max() <= 1
    with torch.no_grad():
        predictions = judge(images.mean(dim=1)[:, None]).argmax(-1)
    expected = torch.tensor([FASHION_MNIST_LABELS.index(name) for name in labels])
    accuracy = (predictions == expected).float().mean().item()
    assert accuracy >= 0.7, f"only {accuracy:.2f} of generated samples judged as their class (chance: 0.1)"


def test_guidance_matters_and_seeds_reproduce(pipeline):
    a = pipeline(["Bag"] * 2, generator=torch.Generator().manual_seed(3), output_type="pt").images
    b = pipeline(["Bag"] * 2, generator=torch.Generator().manual_seed(3), output_type="pt").images
    c = pipeline(["Bag"] * 2, guidance_scale=1.0, generator=torch.Generator().manual_seed(3), output_type="pt").images
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_shipped_tokenizer_reconstructs_test_images(pipeline):
    images, _ = load_fashion_mnist_arrays("test")
    pixel_values = fmnist_pixel_values(images[:200])
    reconstruction = pipeline.tokenizer.reconstruct(pixel_values, generator=torch.Generator().manual_seed(0))
    value = peak_signal_noise_ratio(to_unit_range(reconstruction)[:, None], to_unit_range(pixel_values)[:, None]).mean().item()
    # a constant mid-grey image scores about 7 dB, the per-pixel mean image about 11 dB
    assert value > 15, f"reconstruction PSNR {value:.1f} dB"
    assert pipeline.tokenizer.config.latent_channels * pipeline.tokenizer.config.grid_size**2 <= 784 / 3


def test_cli_generate_and_reconstruct_default_to_the_shipped_model(tmp_path):
    out = tmp_path / "generated"
    result = subprocess.run(
        [sys.executable, "-m", "uniflow_hf.cli", "generate", "--label", "Sneaker", "--num-images", "3", "--seed", "0",
         "--steps", "4", "--output-dir", str(out)],  # the entry point in a fresh interpreter, as a user runs it
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) >= 4, pngs  # 3 images and a grid
    image = next(p for p in out.glob("*.png") if "grid" not in p.name)
    result = uniflow_hf_command("reconstruct", str(image), "--output-dir", str(tmp_path / "recon"))
    assert result.returncode == 0, result.stderr
    assert "PSNR" in result.stdout and list((tmp_path / "recon").glob("*.png"))


def uniflow_hf_command(*args) -> subprocess.CompletedProcess:
    """`uniflow-hf ARGS...` as the console script runs it, in this process (a fresh interpreter would spend
    ~8 s importing; `test_cli_generate_and_reconstruct_default_to_the_shipped_model` runs the entry point itself)."""
    import contextlib
    import io

    from uniflow_hf.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as error:  # argparse's usage errors
            code = error.code
    return subprocess.CompletedProcess(["uniflow-hf", *args], code, stdout.getvalue(), stderr.getvalue())


def fmnist_command(*args) -> subprocess.CompletedProcess:
    return uniflow_hf_command("fmnist", *args)


def test_finetune_decoder_trains_only_the_decoder(tmp_path):
    """Stage b' (`uniflow-hf fmnist finetune-decoder`): the encoder and `latent_proj` (so the latents, the probe and a
    generator trained on them) stay bit-identical; the decoder moves; the flow-time override is saved."""
    from safetensors.torch import load_file

    tokenizer = SHIPPED / "tokenizer"
    result = fmnist_command(
        "finetune-decoder", "--tokenizer", str(tokenizer), "--output-dir", str(tmp_path / "ft"), "--epochs", "1",
        "--max-train", "256", "--learning-rate", "1e-3", "--flow-timestep-distribution", "lognormal",
        "--flow-timestep-logit-mean", "-2",
    )
    assert result.returncode == 0, result.stderr
    before, after = load_file(tokenizer / "model.safetensors"), load_file(tmp_path / "ft" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert not {name for name in changed if name.startswith(("vision_model.", "latent_proj."))}
    assert any(name.startswith("flow_head.") for name in changed) and any(name.startswith("global_blocks.") for name in changed)
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["flow_timestep_distribution"] == "lognormal" and config["flow_timestep_logit_mean"] == -2.0
    assert config["freeze_encoder"] is False


def test_fmnist_stage_rejects_a_bad_flow_timestep_setting(tmp_path):
    result = fmnist_command(
        "finetune-decoder", "--tokenizer", str(SHIPPED / "tokenizer"), "--output-dir", str(tmp_path / "ft"),
        "--max-train", "128", "--flow-timestep-logit-std", "0",
    )
    assert result.returncode != 0 and "`flow_timestep_logit_std` must be > 0" in result.stderr
    assert not (tmp_path / "ft" / "model.safetensors").exists()


def test_fmnist_train_generator_rejects_bad_schedules(tmp_path):
    stage = ["train-generator", "--tokenizer", str(SHIPPED / "tokenizer"), "--output-dir", str(tmp_path / "gen"),
             "--max-train", "64", "--max-steps", "10"]
    result = fmnist_command(*stage, "--lr-scheduler-type", "linear", "--warmup-steps", "10")
    assert result.returncode == 2 and "`warmup_steps` (10) must be below the number of steps (10)" in result.stderr
    result = fmnist_command(*stage, "--timestep-logit-std", "0")
    assert result.returncode == 2 and "`timestep_logit_std` must be positive, got 0.0" in result.stderr
    assert not (tmp_path / "gen").exists()


def run_stage(*args):
    result = fmnist_command(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_recipe_stages_chain_into_a_pipeline(tmp_path):
    """Stages a -> b -> b' -> c (-> c continued) of the recipe, each a CLI command, on a few hundred images (a
    step or two each): the
    classifier's encoder seeds the tokenizer, whose latents (4x4x16) feed the generator, and the pipeline folder
    generates FMNIST images."""
    from safetensors.torch import load_file

    from uniflow_hf import UniFlowClassConditionalPipeline, UniFlowModel
    from uniflow_hf.modeling import UniFlowForImageClassification

    encoder, tokenizer, decoder_tuned, model = (tmp_path / n for n in ("encoder", "tokenizer", "tuned", "pipeline"))
    assert "test accuracy" in run_stage("pretrain-encoder", "--output-dir", str(encoder), "--max-train", "256")
    run_stage("adapt", "--encoder", str(encoder), "--output-dir", str(tokenizer), "--max-train", "256",
              "--flow-timestep-distribution", "lognormal", "--flow-timestep-logit-mean", "-2")
    run_stage("finetune-decoder", "--tokenizer", str(tokenizer), "--output-dir", str(decoder_tuned), "--max-train", "128")
    run_stage("train-generator", "--tokenizer", str(decoder_tuned), "--output-dir", str(model), "--max-steps", "3",
              "--per-device-train-batch-size", "16", "--max-train", "64", "--decoder-steps", "4", "--ema-decay", "0.9",
              "--solver", "heun", "--euler-at-final", "--guidance-scale", "2", "--guidance-interval", "0.2", "1")
    # a continuation stage starts from the saved DiT (at learning rate 0 it stays exactly that)
    continuation = ["--init-generator", str(model), "--learning-rate", "0", "--max-steps", "2",
                    "--per-device-train-batch-size", "16",
                    "--max-train", "64", "--seed", "1"]
    run_stage("train-generator", "--tokenizer", str(decoder_tuned), "--output-dir", str(tmp_path / "continued"),
              *continuation)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    continued, started = load_file(tmp_path / "continued" / weights), load_file(model / weights)
    assert continued.keys() == started.keys() and all(torch.equal(continued[k], started[k]) for k in started)

    classifier = UniFlowForImageClassification.from_pretrained(encoder)
    adapted = UniFlowModel.from_pretrained(tokenizer)
    assert classifier.config.id2label[7] == "Sneaker" and 0 < classifier.config.test_accuracy <= 1
    assert adapted.config.latent_channels * adapted.config.grid_size**2 == 256 <= 784 / 3
    assert adapted.config.flow_timestep_logit_mean == -2.0 and adapted.distillation_teacher is None
    # adapted from the pretrained encoder: close to it, but trained (distillation keeps it near)
    start, end = classifier.vision_model.state_dict(), adapted.vision_model.state_dict()
    assert any(not torch.equal(start[name], end[name]) for name in start)
    assert max((start[name] - end[name]).abs().max().item() for name in start) < 0.05

    pipe = UniFlowClassConditionalPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer.config.flow_timestep_logit_mean == -2.0
    assert pipe.config.decoder_num_inference_steps == 4 and pipe.tokenizer.config.num_sampling_steps == 1
    assert pipe.scheduler.config.solver == "heun" and pipe.scheduler.config.euler_at_final
    assert pipe.config.guidance_scale == 2.0 and pipe.config.guidance_interval == [0.2, 1.0]
    images = pipe(["Bag", "Trouser"], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 3, 28, 28) and torch.isfinite(images).all()

    # e. a smaller DiT on the same latents, attached as the pipeline's autoguidance guide
    run_stage("train-generator", "--tokenizer", str(decoder_tuned), "--output-dir", str(tmp_path / "guide"), "--max-steps",
              "2", "--per-device-train-batch-size", "16", "--max-train", "64", "--seed", "2", "--transformer-kwargs", '{"num_layers": 1}')
    attach = uniflow_hf_command(
        "attach-guide", "--model", str(model), "--guide", str(tmp_path / "guide"), "--autoguidance-scale", "2",
        "--autoguidance-interval", "0.8", "1", "--output-dir", str(tmp_path / "guided"),
    )
    assert attach.returncode == 0, attach.stderr[-3000:]
    guided = UniFlowClassConditionalPipeline.from_pretrained(tmp_path / "guided")
    guided.set_progress_bar_config(disable=True)
    assert guided.guide_transformer.config.num_layers == 1 and guided.transformer.config.num_layers == 6
    assert guided.config.autoguidance_scale == 2.0 and guided.config.autoguidance_interval == [0.8, 1.0]
    assert guided.config.guidance_interval == [0.2, 1.0] and guided.config.decoder_num_inference_steps == 4
    assert guided.scheduler.config.euler_at_final  # the sampler's settings travel with the pipeline
    kwargs = dict(num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="latent")
    autoguided = guided(["Bag"], **kwargs).images
    assert not torch.allclose(autoguided, guided(["Bag"], **{**kwargs, "autoguidance_scale": 1.0}).images)


def load_report_script(name: str = "fmnist_report"):
    """`benchmarks/<name>.py` as a module (the report scripts are scripts, not part of the package)."""
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def committed_report() -> dict:
    """The numbers of the committed `benchmarks/fmnist_report.json`."""
    from conftest import REPO_ROOT

    return json.loads((REPO_ROOT / "benchmarks" / "fmnist_report.json").read_text())


def test_report_reuses_tokenizer_rows_of_the_same_weights_only(tmp_path):
    """`fmnist_report.py --tokenizer-rows-from` takes the judge-free tokenizer table of an earlier report, and only
    when that report measured the very same tokenizer weights."""
    report = load_report_script()
    weights = tmp_path / "model" / "tokenizer" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"tokenizer weights")
    fingerprint = report.tokenizer_fingerprint(tmp_path / "model")
    rows = {"tokenizers": {"shipped": {"psnr": 29.5, "ssim": 0.93, "probe": 0.87}}, "teacher_probe": 0.87}
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({**rows, "tokenizer_sha256": fingerprint, "generation": {"fd_vs_test": 1.0}}))
    assert report.earlier_tokenizer_rows(earlier, fingerprint) == {"tokenizer_rows_reused": True, **rows}
    # a report whose ablation rows were themselves kept from an older one passes on where they came from
    provenance = {"ablation_rows_from": "older.json", "ablation_teacher_probe": 0.86}
    earlier.write_text(json.dumps({**rows, **provenance, "tokenizer_sha256": fingerprint}))
    reused = report.earlier_tokenizer_rows(earlier, fingerprint)
    assert reused == {"tokenizer_rows_reused": True, **rows, **provenance}
    assert "`older.json`; the teacher they distilled against probed at 86.00 %" in report.render(
        {**committed_report(), **reused}
    )

    weights.write_bytes(b"other tokenizer weights")
    with pytest.raises(SystemExit, match="measured other tokenizer weights"):
        report.earlier_tokenizer_rows(earlier, report.tokenizer_fingerprint(tmp_path / "model"))


def test_report_takes_ablation_rows_of_an_earlier_report(tmp_path):
    """`fmnist_report.py --ablation-rows-from` keeps an earlier report's ablation rows (every tokenizer row after the
    shipped one) with the probe of their teacher, so the shipped tokenizer can be re-measured alone; the report says
    where they come from."""
    report = load_report_script()
    earlier = committed_report()
    for key in report.ABLATION_PROVENANCE:  # the committed report may itself reuse rows
        earlier.pop(key, None)
    shipped, *ablations = earlier["tokenizers"]
    earlier["teacher_probe"] = 0.8717
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    taken = report.earlier_ablation_rows(path)
    assert list(taken["ablation_rows"]) == ablations and shipped not in taken["ablation_rows"]
    assert taken["ablation_teacher_probe"] == 0.8717 and taken["ablation_rows_from"] == "earlier.json"

    results = {**earlier, "teacher_probe": 0.8700}
    results["tokenizers"] = {"UniFlow-FMNIST (shipped)": earlier["tokenizers"][shipped], **taken.pop("ablation_rows")}
    rendered = report.render({**results, **taken})
    assert "come from an earlier run of this script, `earlier.json`; the teacher they distilled against probed at " \
        "87.17 %" in rendered
    assert "| teacher (pretrained encoder, frozen copy) | – | – | 87.00 |" in rendered
    assert "earlier run of this script, `" not in report.render(results)

    path.write_text(json.dumps({**earlier, "tokenizers": {shipped: earlier["tokenizers"][shipped]}}))
    with pytest.raises(SystemExit, match="has no ablation rows"):
        report.earlier_ablation_rows(path)


def test_report_renders_the_tokenizer_bound_next_to_the_floor():
    """The generation table shows the tokenizer's bound (reconstructed training images vs test) with its ratio to the
    floor; a report written before the bound existed still renders, without the row."""
    report = load_report_script()
    results = committed_report()
    results.pop("fd_tokenizer_bound", None)
    assert "bound from the tokenizer" not in report.render(results)

    results["fd_floor_train_vs_test"], results["fd_tokenizer_bound"] = 0.25, 0.5
    results["generation"]["decoder_latent_scale"] = 1.0  # a scaled one is named too (the guidance settings' test)
    rows = [line for line in report.render(results).splitlines() if line.startswith("| bound from the tokenizer")]
    decoder_steps = results["generation"]["decoder_steps"]
    assert rows == [
        f"| bound from the tokenizer: its reconstructions of the floor's training images, {decoder_steps} decoder "
        "step(s), vs test | 0.500 (2.00×) |"
    ]


def test_report_renders_the_headline_setting_on_each_noise_seed_and_their_mean():
    """`--noise-seeds 0 1 ...`: the headline setting measured on each noise seed, in a table with their mean; a
    report of one seed (or from before the option) has no such table."""
    report = load_report_script()
    results = committed_report()
    headline = {key: results["generation"][key] for key in ("class_accuracy", "fd_vs_test")}
    results["fd_floor_train_vs_test"] = 0.25
    results["generation_by_noise_seed"] = [{"noise_seed": 0, **headline}]
    assert "| noise seed |" not in report.render(results)
    results.pop("generation_by_noise_seed")
    assert "| noise seed |" not in report.render(results)

    results["generation_by_noise_seed"] = [
        {"noise_seed": 0, "class_accuracy": 0.95, "fd_vs_test": 0.7},
        {"noise_seed": 3, "class_accuracy": 0.96, "fd_vs_test": 0.8},
    ]
    lines = report.render(results).splitlines()
    start = lines.index("| noise seed | class accuracy | Fréchet distance | ratio to the floor |")
    assert lines[start + 2 : start + 5] == [
        "| 0 | 95.00 % | 0.700 | 2.80× |",
        "| 3 | 96.00 % | 0.800 | 3.20× |",
        "| mean of 2 | 95.50 % | 0.750 | 3.00× |",
    ]


def test_report_guidance_settings_with_and_without_autoguidance():
    """`--compare-guidance SCALE:T_START:T_END[/RESCALE][@SCALE:T_START:T_END][xLATENT_SCALE]`: after a / the
    guidance rescale, after an @ the autoguidance, after an x the decoder's latent scale, none without them; the
    guidance table shows each row's rescale, autoguidance and latent scale, and a report from before them renders with
    none."""
    report = load_report_script()
    assert report.parse_guidance_setting("2:0.24:0.7") == (2.0, [0.24, 0.7], 0.0, 1.0, [0.0, 1.0], 1.0)
    assert report.parse_guidance_setting("1.5@2:0.7:1") == (1.5, [0.0, 1.0], 0.0, 2.0, [0.7, 1.0], 1.0)
    assert report.parse_guidance_setting("2:0.24:0.7/0.7@2:0.8:1") == (2.0, [0.24, 0.7], 0.7, 2.0, [0.8, 1.0], 1.0)
    assert report.parse_guidance_setting("1.5:0.24:0.7/0.85@2.5:0.8:1x1.025") == (
        1.5, [0.24, 0.7], 0.85, 2.5, [0.8, 1.0], 1.025
    )
    with pytest.raises(ValueError, match="Bad guidance setting '2:0.24'"):
        report.parse_guidance_setting("2:0.24")

    def as_in_an_older_report(row):  # a row as a report from before autoguidance, the rescale and the latent scale
        return {
            key: value for key, value in row.items()
            if not key.startswith("auto") and key not in ("guidance_rescale", "decoder_latent_scale")
        }

    results = committed_report()
    plain = {**as_in_an_older_report(results["guidance_comparison"][0]), "guidance_scale": 2.0,
             "guidance_interval": [0.24, 0.7]}
    results["generation"] = as_in_an_older_report(results["generation"])
    results["generation"].update(guidance_scale=2.0, guidance_interval=[0.24, 0.7])
    results["guidance_comparison"] = [plain]
    assert "autoguidance 2" not in report.render(results)
    autoguided = {**plain, "autoguidance_scale": 2.0, "autoguidance_interval": [0.7, 1.0]}
    results["guidance_comparison"] = [autoguided, plain]
    results["generation"].update(autoguidance_scale=2.0, autoguidance_interval=[0.7, 1.0])
    rendered = report.render(results)
    assert "guidance 2.0 at flow times 0.24 ≤ t ≤ 0.7 (0 = noise), autoguidance 2 at 0.7 ≤ t ≤ 1, 25" in rendered
    rows = [line for line in rendered.splitlines() if line.startswith("| 2.0 | 0.24 ≤ t ≤ 0.7 |")]
    assert [row.split(" | ")[2:4] for row in rows] == [["–", "2 at 0.7 ≤ t ≤ 1"], ["–", "–"]]
    results["guidance_comparison"] = [{**autoguided, "guidance_rescale": 0.7}, autoguided]
    results["generation"].update(guidance_rescale=0.7)
    rendered = report.render(results)
    assert "0.24 ≤ t ≤ 0.7 (0 = noise) rescaled by 0.7 (Lin et al., 2024), autoguidance 2 at 0.7 ≤ t ≤ 1" in rendered
    rows = [line for line in rendered.splitlines() if line.startswith("| 2.0 | 0.24 ≤ t ≤ 0.7 |")]
    assert [row.split(" | ")[2] for row in rows] == ["0.7", "–"]
    # the decoder's latent scale: in the headline, the bound row and its own column ("–" for 1 and older rows)
    results["guidance_comparison"] = [{**autoguided, "decoder_latent_scale": 1.025}, autoguided]
    results["generation"].update(decoder_latent_scale=1.025, decoder_steps=8)
    rendered = report.render(results)
    assert "8 decoder step(s) on the latents scaled by 1.025, judged by" in rendered
    assert "training images, 8 decoder step(s) on the latents scaled by 1.025, vs test |" in rendered
    rows = [line for line in rendered.splitlines() if line.startswith("| 2.0 | 0.24 ≤ t ≤ 0.7 |")]
    assert [row.split(" | ")[4] for row in rows] == ["1.025", "–"]


def test_ablation_seed_report_pairs_each_setting_with_the_reference_seed_by_seed():
    """`fmnist_ablation_seeds.py`: every run's row, each setting's mean ± standard deviation over its seeds, and each
    setting minus the first one paired by seed (mean ± standard error), counting the seeds where the first setting is
    at least as good on both PSNR and probe; a seed only one setting was run with is not paired."""
    report = load_report_script("fmnist_ablation_seeds")
    assert report.parse_run("adaptive β=2:1=runs/a-s1") == ("adaptive β=2", 1, "runs/a-s1")
    for bad in ("adaptive β=2=runs/a", "adaptive:x=runs/a", "adaptive:1="):
        with pytest.raises(SystemExit, match="SETTING:SEED=DIR"):
            report.parse_run(bad)

    def run(setting, seed, psnr, probe):
        return {"setting": setting, "seed": seed, "psnr": psnr, "ssim": 0.75, "probe": probe}

    runs = [run("adaptive", 0, 22.0, 0.870), run("uniform", 0, 21.9, 0.872), run("adaptive", 1, 22.2, 0.874),
            run("uniform", 1, 22.0, 0.868), run("adaptive", 2, 22.1, 0.871)]
    lines = report.render({"runs": runs, "teacher_probe": 0.8719, "seconds": 600}).splitlines()
    assert "| uniform | 1 | 22.00 | 0.7500 | 86.80 |" in lines
    assert "| adaptive | 3 | 22.10 ± 0.10 | 0.7500 ± 0.0000 | 87.17 ± 0.21 |" in lines
    assert "| uniform | 2 | 21.95 ± 0.07 | 0.7500 ± 0.0000 | 87.00 ± 0.28 |" in lines
    # uniform − adaptive: PSNR -0.1 and -0.2 (mean -0.15, standard error 0.05), probe +0.2 and -0.6 points; adaptive
    # is at least as good on both only with seed 1
    assert lines[-1] == "| uniform | 2 | -0.150 ± 0.050 | -0.20 ± 0.40 | 1 of 2 |"


def test_fd_diagnostics_move_class_means_and_render_each_set():
    """`fmnist_fd_diagnostics.py`: each class's features moved onto the reference class mean (their spread kept), the
    per-class spread, and the report's rows (distances as multiples of the floor, generated / bound spreads, the
    noise-scale rows)."""
    diagnostics = load_report_script("fmnist_fd_diagnostics")
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 3, generator=generator) * torch.tensor([1.0, 2.0, 3.0])
    labels = torch.arange(40) % 2
    reference = torch.randn(30, 3, generator=generator) + 5
    reference_labels = torch.arange(30) % 2
    moved = diagnostics.class_means_moved(features, labels, reference, reference_labels)
    for class_id in (0, 1):
        mine, theirs = labels == class_id, reference_labels == class_id
        assert torch.allclose(moved[mine].mean(0), reference[theirs].mean(0), atol=1e-5)
        assert torch.allclose(moved[mine] - moved[mine].mean(0), features[mine] - features[mine].mean(0), atol=1e-5)
    spreads = diagnostics.class_spreads(features, labels, num_classes=2)
    assert spreads == pytest.approx([features[labels == c].var(0).sum().item() for c in (0, 1)])

    def row(distance, moved_distance, spread):
        return {"fd_vs_test": distance, "fd_class_means_moved": moved_distance, "class_spread": spread}

    results = {
        "model": "runs/uniflow-fmnist", "seconds": 600, "judge_test_accuracy": 0.9, "num_generated": 100,
        "noise_seed": 0, "num_floor": 10000, "decoder_steps": 8, "labels": ["Bag", "Coat"], "test_class_spread": [10.0, 20.0],
        "sets": {"floor": row(0.25, 0.125, [9.0, 19.0]), "bound": row(0.5, 0.15, [8.0, 20.0]),
                 "generated": row(0.75, 0.5, [6.0, 21.0])},
        "noise_scales": [{"noise_scale": 1.0, "class_accuracy": 0.95, "fd_vs_test": 0.75},
                         {"noise_scale": 1.04, "class_accuracy": 0.9, "fd_vs_test": 1.0}],
    }
    lines = diagnostics.render(results).splitlines()
    assert "| their reconstructions (the bound) | 0.500 (2.00×) | 0.150 |" in lines
    assert "| generated samples | 0.750 (3.00×) | 0.500 |" in lines
    assert "| Bag | 10.0 | 9.0 | 8.0 | 6.0 | 0.75 |" in lines and "| Coat | 20.0 | 19.0 | 20.0 | 21.0 | 1.05 |" in lines
    assert lines[-2:] == ["| 1 | 95.00 % | 0.750 | 3.00× |", "| 1.04 | 90.00 % | 1.000 | 4.00× |"]

