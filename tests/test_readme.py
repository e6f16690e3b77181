"""The README and the shipped model's card: every Python snippet runs as written from a directory outside the
repository (against the installed package), the README stays a short guide whose test command is the one CI runs, and
the model card carries Hugging Face model-card metadata."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import uniflow_hf


REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MODEL_CARD = REPO / "uniflow_hf" / "models" / "uniflow-fmnist" / "README.md"
MAX_README_LINES = 200
CARD_KEYS = ("license", "library_name", "tags", "datasets", "metrics")  # no pipeline_tag: no Hub task is class-conditional

# Runs each snippet in a fresh namespace (so a missing import fails as it would in a fresh interpreter) and in a
# directory of its own, paying the transformers/diffusers import once for all snippets.
RUNNER = """
import json, os, sys, traceback
snippets, results = json.load(open(sys.argv[1])), {}
root = os.getcwd()
for name, code in snippets.items():
    folder = os.path.join(root, name.replace(":", "-").replace("/", "-"))
    os.makedirs(folder)
    os.chdir(folder)
    try:
        exec(compile(code, name, "exec"), {"__name__": "__main__"})
        results[name] = None
    except BaseException:
        results[name] = traceback.format_exc()
json.dump(results, open(sys.argv[2], "w"))
"""


def python_snippets(path: Path) -> dict[str, str]:
    """The ```python blocks of a Markdown file, keyed `file:line` (the line of the opening fence)."""
    text = path.read_text()
    return {
        f"{path.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}": match.group(1)
        for match in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    }


SNIPPETS = {**python_snippets(README), **python_snippets(MODEL_CARD)}


@pytest.fixture(scope="module")
def snippet_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme_snippets")
    assert REPO not in folder.parents and folder != REPO
    (folder / "snippets.json").write_text(json.dumps(SNIPPETS))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # the installed package, as a user has it
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(folder / "snippets.json"), str(folder / "results.json")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0 and (folder / "results.json").exists(), result.stderr[-3000:]
    return json.loads((folder / "results.json").read_text())


def test_readme_and_card_have_snippets():
    names = list(SNIPPETS)
    assert sum(name.startswith("README.md:") for name in names) >= 3
    assert any(name.startswith("uniflow_hf/models/") for name in names)


@pytest.mark.parametrize("name", list(SNIPPETS))
def test_snippet_runs_outside_the_repository(name, snippet_results):
    assert snippet_results[name] is None, f"{name} failed:\n{snippet_results[name]}"


def test_readme_is_short():
    num_lines = len(README.read_text().splitlines())
    assert num_lines <= MAX_README_LINES, f"README.md has {num_lines} lines, more than {MAX_README_LINES}"


def test_readme_test_command_is_the_one_ci_runs():
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    ci_command = ci_lines[ci_lines.index("# --- the README's test command, verbatim ---") + 1]
    assert f"```bash\n{ci_command}\n```" in README.read_text()


def test_shipped_model_path_is_the_installed_pipeline_folder():
    path = Path(uniflow_hf.FMNIST_MODEL_PATH)
    assert "FMNIST_MODEL_PATH" in uniflow_hf.__all__
    assert path.is_absolute() and path.parent == Path(uniflow_hf.__file__).resolve().parent / "models"
    class_name = json.loads((path / "model_index.json").read_text())["_class_name"]
    assert class_name == ["pipeline_uniflow_class_conditional", "UniFlowClassConditionalPipeline"]
    assert (path / "README.md").read_text() == MODEL_CARD.read_text()  # the card ships with the model


def test_model_card_metadata_and_figures():
    text = MODEL_CARD.read_text()
    assert text.startswith("---\n"), "the model card must open with YAML front matter"
    card = ModelCard(text).data
    missing = [key for key in CARD_KEYS if not card.to_dict().get(key)]
    assert not missing, f"the model card's metadata lacks {missing}"
    assert card.license == "apache-2.0" and "fashion_mnist" in card.datasets and "class-conditional" in card.tags
    assert card.pipeline_tag is None  # not unconditional-image-generation

    # Its figures are the committed report's, to the digits the card gives.
    report = json.loads((REPO / "benchmarks" / "fmnist_report.json").read_text())
    shipped = report["tokenizers"]["UniFlow-FMNIST (shipped)"]
    by_seed = report["generation_by_noise_seed"]
    generation = "unconditional-image-generation"
    expected = {
        ("image-to-image", "psnr"): shipped["psnr"],
        ("image-to-image", "ssim"): shipped["ssim"],
        ("image-classification", "accuracy"): 100 * shipped["probe"],
        (generation, "accuracy"): 100 * sum(row["class_accuracy"] for row in by_seed) / len(by_seed),
        (generation, "frechet_distance"): sum(row["fd_vs_test"] for row in by_seed) / len(by_seed),
    }
    stated = {(result.task_type, result.metric_type): result.metric_value for result in card.eval_results}
    assert stated.keys() == expected.keys()
    for key, value in stated.items():
        digits = len(str(value).partition(".")[2])
        assert value == pytest.approx(expected[key], abs=0.5 * 10**-digits), f"{key}: {value}, report {expected[key]}"


def test_readme_commands_parse():
    """Each `uniflow-hf ...` line of the README names a command and options the CLI accepts."""
    import shlex

    from uniflow_hf_cli import build_parser

    lines = [line.split("#")[0] for line in README.read_text().splitlines() if line.startswith("uniflow-hf ")]
    assert len(lines) >= 3
    for line in lines:
        argv = shlex.split(line)[1:]
        build_parser(argv[0]).parse_args(argv)  # argparse exits on an unknown command or option
