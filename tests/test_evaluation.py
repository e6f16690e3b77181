"""`uniflow_hf.evaluation` and `uniflow-hf evaluate`: streamed, batched, sharded reconstruction metrics."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio as skimage_psnr
from skimage.metrics import structural_similarity as skimage_ssim
from skimage.transform import resize

from uniflow_hf.evaluation import evaluate_reconstruction, load_tokenizer, open_image_source
from uniflow_hf.metrics import FIDInceptionV3
from uniflow_hf.metrics._common import frechet_distance_of_features

from conftest import REPO_ROOT, TINY_CONFIG


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str, size=(40, 52)) -> Image.Image:
    array = resize(getattr(skimage.data, name)(), size, anti_aliasing=True)
    return Image.fromarray(np.round(array * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    (folder / "nested").mkdir()
    for index, name in enumerate(PHOTOS[:3]):
        photo(name).save(folder / ("nested" if index == 2 else "") / f"{index}_{name}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def expected_metrics(model, processor, images, seed=0):
    """Reconstruct `images` directly (noise of image i from seed + i) and score them with scikit-image."""
    pixel_values = processor(images, return_tensors="pt").pixel_values
    tokens = (pixel_values.shape[-1] // model.config.patch_size) ** 2
    noise = torch.stack(
        [torch.randn(tokens, model.config.patch_dim, generator=torch.Generator().manual_seed(seed + i))
         for i in range(len(images))]  # fmt: skip
    )
    reconstructions = processor.postprocess(model.reconstruct(pixel_values, noise=noise), output_type="np")
    references = processor.postprocess(pixel_values, output_type="np")
    pairs = [(r.astype(np.float64), p.astype(np.float64)) for r, p in zip(references, reconstructions)]
    psnr = np.mean([skimage_psnr(r, p, data_range=1) for r, p in pairs])
    ssim = np.mean(
        [skimage_ssim(r, p, data_range=1, channel_axis=-1, gaussian_weights=True, use_sample_covariance=False)
         for r, p in pairs]  # fmt: skip
    )
    return psnr, ssim, reconstructions, references


def test_evaluation_matches_a_direct_computation(official_tiny_dir, image_folder):
    model, processor = load_tokenizer(str(official_tiny_dir))
    assert processor.crop_size["height"] == model.config.image_size
    source = open_image_source(str(image_folder))
    names = [os.path.basename(source.name(i)) for i in range(len(source))]
    assert names == ["0_astronaut.png", "1_chelsea.png", "2_coffee.png"]  # sorted, recursive, images only
    results = evaluate_reconstruction(model, source, processor, batch_size=2, progress=False)
    images = [Image.open(image_folder / source.name(i)) for i in range(3)]
    psnr, ssim, _, _ = expected_metrics(model, processor, images)
    assert results["num_images"] == 3 and results["num_skipped"] == 0
    assert results["psnr"] == pytest.approx(psnr, rel=1e-6)
    assert results["ssim"] == pytest.approx(ssim, rel=1e-6)
    assert results["resolution"] == model.config.image_size and results["num_inference_steps"] == 1


def test_results_depend_on_the_seed_not_on_the_batch_size(official_tiny_dir, image_folder):
    model, processor = load_tokenizer(str(official_tiny_dir))
    source = open_image_source(str(image_folder))
    one_by_one = evaluate_reconstruction(model, source, processor, batch_size=1, progress=False)
    all_at_once = evaluate_reconstruction(model, source, processor, batch_size=3, progress=False)
    other_seed = evaluate_reconstruction(model, source, processor, batch_size=3, seed=7, progress=False)
    assert one_by_one["psnr"] == pytest.approx(all_at_once["psnr"], rel=1e-6)
    assert one_by_one["ssim"] == pytest.approx(all_at_once["ssim"], rel=1e-6)
    assert other_seed["psnr"] != pytest.approx(all_at_once["psnr"], rel=1e-6)


def test_steps_and_resolution(official_tiny_dir, image_folder):
    model, processor = load_tokenizer(str(official_tiny_dir))
    source = open_image_source(str(image_folder))
    results = evaluate_reconstruction(
        model, source, processor, resolution=40, num_inference_steps=3, max_images=2, progress=False
    )
    images = [Image.open(image_folder / source.name(i)) for i in range(2)]
    sized = dict(size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40})
    pixel_values = processor(images, return_tensors="pt", **sized).pixel_values
    assert pixel_values.shape[-1] == 40 and results["resolution"] == 40 and results["num_images"] == 2
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        evaluate_reconstruction(model, source, processor, resolution=36, progress=False)


def test_two_processes_give_the_single_process_result(official_tiny_dir, image_folder, tmp_path):
    """`torchrun --nproc_per_node 2 ... uniflow-hf evaluate` on CPU with no Accelerate setup (accelerate then counts
    one process while the launcher started two): each process loads half of the images, the sums are reduced and the
    skipped list gathered, so the results are those of one process over all of them; only the first process prints
    and writes them. One launch (this file as the workers' script) for all of it."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(image_folder.rglob("*.png")):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "3_empty.png").write_bytes(b"")
    output = tmp_path / "results.json"
    evaluate = [
        "evaluate", "--model", str(official_tiny_dir), "--dataset", str(folder), "--batch-size", "1",
        "--skip-unreadable", "--no-progress", "--output", str(output), "--dtype", "float32",
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}  # plain torchrun
    # PYTHONPATH: the workers import this checkout, not an installed copy (their sys.path starts at tests/)
    environment.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(REPO_ROOT))
    environment["CUDA_VISIBLE_DEVICES"] = ""  # a machine without GPUs, on any host
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), __file__, str(tmp_path), *evaluate,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.count('"num_images"') == 1  # only the first process prints (and writes) the results
    assert [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)] == [[0, 1], [2, 3]]
    sharded = json.loads(output.read_text())
    model, processor = load_tokenizer(str(official_tiny_dir))
    source = open_image_source(str(folder))
    single = evaluate_reconstruction(model, source, processor, skip_unreadable=True, progress=False)
    assert sharded["num_processes"] == 2
    assert sharded["num_images"] == single["num_images"] == 3
    assert sharded["skipped"] == single["skipped"] and "3_empty.png" in sharded["skipped"][0]
    assert sharded["psnr"] == pytest.approx(single["psnr"], rel=1e-6)
    assert sharded["ssim"] == pytest.approx(single["ssim"], rel=1e-6)


class RecordingSource:
    """An image folder that records the indices it loads."""

    def __init__(self, root):
        self.folder = open_image_source(str(root))
        self.loaded = []

    def __len__(self):
        return len(self.folder)

    def name(self, index):
        return self.folder.name(index)

    def load(self, index):
        self.loaded.append(index)
        return self.folder.load(index)


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_destroys_the_process_group_it_ran_under(official_tiny_dir, image_folder, tmp_path):
    """A command run under torchrun must destroy the process group before the interpreter exits: gloo's threads can
    otherwise abort a finished process at teardown (seen on CI as SIGABRT after the results were written)."""
    from uniflow_hf.cli import main

    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        code = main(["evaluate", "--model", str(official_tiny_dir), "--dataset", str(image_folder), "--no-progress"])
        assert code == 0 and not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_saved_dataset_split_and_column(official_tiny_dir, tmp_path):
    import datasets

    images = [photo(name) for name in PHOTOS]
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"img": images[:1], "label": [0]}),
        test=datasets.Dataset.from_dict({"img": images[1:], "label": [1, 2, 3]}),
    )
    splits = splits.cast_column("img", datasets.Image())
    splits.save_to_disk(tmp_path / "dict")
    splits["test"].save_to_disk(tmp_path / "single")
    splits["test"].remove_columns("img").save_to_disk(tmp_path / "no_images")
    model, processor = load_tokenizer(str(official_tiny_dir))

    source = open_image_source(str(tmp_path / "dict"), split="test")
    assert source.column == "img" and len(source) == 3
    from_dict = evaluate_reconstruction(model, source, processor, progress=False)
    from_single = evaluate_reconstruction(model, open_image_source(str(tmp_path / "single")), processor, progress=False)
    psnr, _, _, _ = expected_metrics(model, processor, images[1:])
    assert from_dict["psnr"] == pytest.approx(psnr, rel=1e-6) and from_single["psnr"] == from_dict["psnr"]
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
        open_image_source(str(tmp_path / "dict"), split="validation")
    with pytest.raises(ValueError, match="no image column"):
        open_image_source(str(tmp_path / "no_images"))


def test_pipeline_folder_brings_its_processor(tmp_path, image_folder):
    from uniflow_hf import (
        UniFlowConfig,
        UniFlowImageProcessor,
        UniFlowModel,
        UniFlowReconstructionPipeline,
    )

    torch.manual_seed(0)
    model = UniFlowModel(UniFlowConfig(**TINY_CONFIG)).eval()
    processor = UniFlowImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    pipeline = UniFlowReconstructionPipeline(tokenizer=model, image_processor=processor)
    pipeline.save_pretrained(tmp_path / "pipeline")
    loaded_model, loaded_processor = load_tokenizer(str(tmp_path / "pipeline"))
    assert loaded_processor.crop_size["height"] == 48
    assert all(torch.equal(a, b) for a, b in zip(loaded_model.state_dict().values(), model.state_dict().values()))
    results = evaluate_reconstruction(
        loaded_model, open_image_source(str(image_folder)), loaded_processor, progress=False
    )
    assert results["resolution"] == 48 and results["num_images"] == 3


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's process-wide state reset around the test, so that the device an earlier in-process run picked
    (a GPU, on a GPU machine) does not stick to this one's `uniflow-hf evaluate`."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_cli_writes_json_with_rfid(official_tiny_dir, image_folder, tmp_path, fresh_accelerate_state, monkeypatch):
    from uniflow_hf.cli import main

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # the expected value below is computed on the CPU

    torch.manual_seed(0)
    inception = FIDInceptionV3()
    for module in inception.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    torch.save(inception.state_dict(), tmp_path / "inception.pth")
    output = tmp_path / "out" / "results.json"
    code = main([
        "evaluate", "--model", str(official_tiny_dir), "--dataset", str(image_folder), "--batch-size", "2",
        "--inception-weights", str(tmp_path / "inception.pth"), "--output", str(output), "--no-progress",
        "--dtype", "float32",
    ])  # fmt: skip
    assert code == 0
    results = json.loads(output.read_text())
    assert results["num_images"] == 3 and results["num_processes"] == 1
    assert results["device"] == "cpu" and results["dtype"] == "float32"  # Accelerate's device (ACCELERATE_USE_CPU)
    # The streamed rFID (running sums of Inception features) equals the Fréchet distance of all the features.
    model, processor = load_tokenizer(str(official_tiny_dir))
    source = open_image_source(str(image_folder))
    images = [Image.open(image_folder / source.name(i)) for i in range(len(source))]
    _, _, reconstructions, references = expected_metrics(model, processor, images)
    to_tensor = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)  # noqa: E731
    expected = frechet_distance_of_features(inception(to_tensor(reconstructions)), inception(to_tensor(references)))
    assert results["rfid"] == pytest.approx(expected, rel=1e-4) and results["rfid"] > 0


def test_int8_dynamic_quantisation_stays_close_to_float32(official_tiny_dir, image_folder, tmp_path, fresh_accelerate_state):
    from uniflow_hf.cli import main
    from uniflow_hf.evaluation import quantize_dynamic_int8
    from uniflow_hf.metrics import peak_signal_noise_ratio

    model, processor = load_tokenizer(str(official_tiny_dir))
    quantized = quantize_dynamic_int8(model)
    assert isinstance(quantized.global_blocks[0].mlp.fc1, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(model.global_blocks[0].mlp.fc1, torch.nn.Linear)  # the original is left as it was
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 16, 192, generator=torch.Generator().manual_seed(1))
    reference, output = (m.reconstruct(pixel_values, noise=noise) for m in (model, quantized))
    to_images = lambda x: processor.postprocess(x, output_type="pt")  # noqa: E731
    assert peak_signal_noise_ratio(to_images(output), to_images(reference)).min() > 25
    assert not torch.equal(output, reference)
    output_file = tmp_path / "int8.json"
    code = main([
        "evaluate", "--model", str(official_tiny_dir), "--dataset", str(image_folder), "--int8", "--no-progress",
        "--output", str(output_file),
    ])  # fmt: skip
    assert code == 0 and json.loads(output_file.read_text())["int8"] is True


def test_cli_reports_bad_arguments(official_tiny_dir, tmp_path, capsys):
    from uniflow_hf.cli import main

    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--dataset", str(tmp_path)]) == 2
    assert "No model folder" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(official_tiny_dir), "--dataset", str(tmp_path)]) == 2
    assert "No image files" in capsys.readouterr().err


def test_benchmark_flop_formula_matches_the_flop_counter():
    """The analytic FLOPs of benchmarks/bench_reconstruct.py are exactly what torch's FlopCounterMode counts."""
    from uniflow_hf import UniFlowConfig, UniFlowModel

    path = REPO_ROOT / "benchmarks" / "bench_reconstruct.py"
    spec = importlib.util.spec_from_file_location("bench_reconstruct", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = UniFlowConfig(**TINY_CONFIG)
    model = UniFlowModel(config).eval()
    for resolution, steps in ((32, 1), (48, 3)):
        counter = bench._flop_counter()
        with counter, torch.no_grad():
            model.reconstruct(torch.randn(2, 3, resolution, resolution), num_inference_steps=steps)
        assert counter.get_total_flops() == bench.analytic_flops(config, resolution, steps, batch_size=2)["reconstruct"]


if __name__ == "__main__":  # a torchrun worker of test_two_processes_give_the_single_process_result
    import uniflow_hf.evaluation
    from uniflow_hf.cli import main

    output_dir, argv = sys.argv[1], sys.argv[2:]
    source = RecordingSource(argv[argv.index("--dataset") + 1])
    uniflow_hf.evaluation.open_image_source = lambda *args: source  # what `evaluate` opens: records what it loads
    code = main(argv)
    with open(os.path.join(output_dir, f"rank{os.environ['RANK']}.json"), "w") as handle:
        json.dump(source.loaded, handle)
    sys.exit(code)
