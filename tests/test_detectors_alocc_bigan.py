"""ALOCC and BiGAN: train a few steps on small generated images, score anomalies higher, export to ONNX."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner

from inspector.artifact import METADATA_KEY
from inspector.cli import cli
from inspector.training.detectors import build_detector

SIZE = 16


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets run fastest on one thread, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = {
    "alocc": {"base_width": 8, "max_width": 32},
    "bigan": {"base_width": 8, "max_width": 32, "latent_dim": 8},
}


def stripes(count: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """Normal parts: horizontal stripes with a random phase and a little noise."""
    rows = torch.arange(SIZE, dtype=torch.float32)
    phase = torch.rand(count, 1, 1, 1, generator=generator) * 6.28
    pattern = 0.5 + 0.3 * torch.sin(rows.view(1, 1, SIZE, 1) * 1.5 + phase)
    image = pattern.expand(count, channels, SIZE, SIZE) + 0.03 * torch.randn(
        count, channels, SIZE, SIZE, generator=generator
    )
    return image.clamp(0, 1)


def with_defect(images: torch.Tensor) -> torch.Tensor:
    """Anomalies: the same stripes with a saturated square in the middle."""
    defective = images.clone()
    defective[:, :, 5:11, 5:11] = 1.0
    return defective


def trained(name: str, channels: int, steps: int, options: dict | None = None):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    detector = build_detector(name, (SIZE, SIZE), channels, {**SMALL[name], **(options or {})})
    detector.configure_optimizers(2e-3, steps)
    detector.train()
    history = [detector.training_step({"image": stripes(16, channels, generator)}) for _ in range(steps)]
    detector.eval()
    return detector, history, generator


@pytest.mark.parametrize(
    "name,options",
    [
        ("alocc", {"score": "reconstruction", "rec_weight": 100.0}),
        ("bigan", {"rec_weight": 1.0}),
    ],
)
def test_after_a_few_steps_a_defective_part_scores_higher_and_its_map_lights_up_the_defect(name, options):
    detector, history, generator = trained(name, 1, steps=40, options=options)
    assert all(np.isfinite(value) for step in history for value in step.values())
    normal = stripes(12, 1, generator)
    with torch.no_grad():
        normal_score, _ = detector(normal)
        defect_score, defect_map = detector(with_defect(normal))
    assert normal_score.shape == (12,) and defect_map.shape == (12, 1, SIZE, SIZE)
    pairs_ordered = (defect_score[:, None] > normal_score[None, :]).float().mean()  # the AUROC
    assert pairs_ordered >= 0.9
    inside, outside = defect_map[:, :, 5:11, 5:11].mean(), defect_map[:, :, :3, :].mean()
    assert inside > 2 * outside


def test_alocc_default_score_is_one_minus_d_of_the_reconstruction_and_validation_reports_its_error():
    detector, history, generator = trained("alocc", 3, steps=5)
    assert {"d_loss", "r_loss", "rec_error"} <= set(history[-1])
    images = stripes(4, 3, generator)
    with torch.no_grad():
        score, _ = detector(images)
        inlier_probability = torch.sigmoid(detector.discriminator(detector.reconstructor(images)))
        reconstruction_error = torch.mean((detector.reconstructor(images) - images) ** 2)
    assert torch.allclose(score, 1 - inlier_probability, atol=1e-6)
    assert detector.validation_loss({"image": images}) == pytest.approx(float(reconstruction_error), rel=1e-5)


def test_alocc_rho_stops_once_training_and_validation_reconstructions_are_good_enough():
    loose, _, generator = trained("alocc", 1, steps=30, options={"rho": 1.0})
    strict, _, _ = trained("alocc", 1, steps=30, options={"rho": 1e-9})
    assert not loose.should_stop  # no validation measured yet
    for detector in (loose, strict):
        detector.validation_loss({"image": stripes(8, 1, generator)})
    assert loose.should_stop and not strict.should_stop


def test_alocc_wasserstein_variant_trains_with_a_gradient_penalty_and_scores_minus_the_critic():
    detector, history, generator = trained("alocc", 1, steps=3, options={"wasserstein": True})
    assert all(np.isfinite(step["d_loss"]) for step in history)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.discriminator.modules())
    images = stripes(3, 1, generator)
    with torch.no_grad():
        score, _ = detector(images)
        assert torch.allclose(score, -detector.discriminator(detector.reconstructor(images)))


def test_bigan_options_train_and_the_prior_gives_images():
    options = {
        "spectral_norm": True,
        "label_smoothing": True,
        "instance_noise": 0.2,
        "score_term": "feature_matching",
    }
    detector, history, _ = trained("bigan", 3, steps=3, options=options)
    assert all(np.isfinite(value) for step in history for value in step.values())
    assert int(detector.steps_taken) == 3
    samples = detector.prior_samples(5)
    assert samples.shape == (5, 3, SIZE, SIZE) and samples.min() >= 0 and samples.max() <= 1


def run_onnx(onnx_bytes: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize(
    "name,channels,options",
    [
        ("alocc", 1, {}),
        ("alocc", 3, {"wasserstein": True}),
        ("bigan", 3, {"spectral_norm": True}),
        ("bigan", 1, {"score_term": "feature_matching"}),
    ],
)
def test_scoring_graph_and_components_export_to_onnx_with_a_dynamic_batch_matching_torch(
    name, channels, options
):
    from inspector.export.onnx_export import export_components, export_scoring_graph

    detector, _, generator = trained(name, channels, steps=2, options=options)
    graph = export_scoring_graph(detector)
    onnx.checker.check_model(onnx.load_from_string(graph.onnx_bytes))
    images = stripes(5, channels, generator)  # traced at batch 2, run at batch 5
    score, anomaly_map = run_onnx(graph.onnx_bytes, {"image": images.numpy()})
    with torch.no_grad():
        torch_score, torch_map = detector(images)
    np.testing.assert_allclose(score, torch_score.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(anomaly_map, torch_map.numpy(), rtol=1e-4, atol=1e-5)

    components = {graph.name: graph for graph in export_components(detector)}
    expected = {
        "alocc": {"reconstructor", "discriminator"},
        "bigan": {"encoder", "generator", "discriminator"},
    }
    assert set(components) == expected[name]
    for component_name, component in detector.components().items():
        inputs = component.example_inputs(3)
        outputs = run_onnx(
            components[component_name].onnx_bytes,
            {key: value.numpy() for key, value in zip(component.input_names, inputs)},
        )
        with torch.no_grad():
            reference = component.module(*inputs)
        reference = reference if isinstance(reference, tuple) else (reference,)
        for got, want in zip(outputs, reference):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


# --- end to end: `inspector train` then `inspector export` on a tiny one-class idx dataset ---------------


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def pattern_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """28x28 gray: class 0 horizontal stripes, class 1 vertical stripes, class 2 a bright disc."""
    rng = np.random.default_rng(seed)
    grid = np.arange(28, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = []
    for label in labels:
        phase = rng.uniform(0, 6.28)
        if label == 0:
            image = 128 + 90 * np.sin(yy * 0.8 + phase)
        elif label == 1:
            image = 128 + 90 * np.sin(xx * 0.8 + phase)
        else:
            image = np.where((yy - 14) ** 2 + (xx - 14) ** 2 < 64, 230.0, 30.0)
        images.append(np.clip(image + rng.normal(0, 8, image.shape), 0, 255))
    return np.stack(images).astype(np.uint8)


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    train_labels, test_labels = np.repeat(np.arange(3), 24), np.repeat(np.arange(3), 6)
    write_idx(root / "train-images-idx3-ubyte.gz", pattern_images(train_labels, 0))
    write_idx(root / "train-labels-idx1-ubyte.gz", train_labels)
    write_idx(root / "t10k-images-idx3-ubyte.gz", pattern_images(test_labels, 1))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", test_labels)
    return root


def run_cli(*args: object):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def write_config(folder: Path, detector: str, root: Path, options: dict) -> Path:
    values = {
        "name": detector,
        "detector": detector,
        "detector_options": {**SMALL[detector], **options},
        "input_size": [28, 28],
        "channels": 1,
        "epochs": 2,
        "batch_size": 8,
        "lr": 0.001,
        "val_every_steps": 4,
        "device": "cpu",
        "out": str(folder / "runs"),
        "data": {"format": "mnist", "root": str(root), "normal_class": 0, "val_fraction": 0.2, "workers": 0},
    }
    path = folder / f"{detector}.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "detector,options,components",
    [
        ("alocc", {"score": "discriminator"}, {"reconstructor", "discriminator"}),
        ("bigan", {"rec_weight": 1.0}, {"encoder", "generator", "discriminator"}),
    ],
)
def test_train_then_export_a_one_class_model_from_idx_files(
    tmp_path, idx_root, detector, options, components
):
    config = write_config(tmp_path, detector, idx_root, options)
    trained_run = run_cli("train", "--config", config, "--no-progress")
    assert trained_run.exit_code == 0, trained_run.output
    run_dir = tmp_path / "runs" / detector
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0
    assert (run_dir / "calibration.json").is_file() and (run_dir / "plots" / "samples.png").is_file()
    assert (run_dir / "plots" / "prior_samples.png").is_file() == (detector == "bigan")

    exported = run_cli("export", run_dir, "--out", tmp_path / "model")
    assert exported.exit_code == 0, exported.output
    model = onnx.load(str(tmp_path / "model" / "model.onnx"))
    metadata = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert metadata["detector"] == detector and metadata["trained_on"]["dataset"] == "mnist"
    assert metadata["trained_on"]["normal_class"] == 0
    assert {p.stem for p in (tmp_path / "model" / "components").glob("*.onnx")} == components
    images = pattern_images(np.array([0, 1, 2]), seed=2)[:, None].astype(np.float32) / 255.0
    score, anomaly_map = run_onnx(model.SerializeToString(), {"image": images})
    assert score.shape == (3,) and anomaly_map.shape == (3, 1, 28, 28)


def test_alocc_rho_ends_training_at_the_first_validation_below_it(tmp_path, idx_root):
    config = write_config(tmp_path, "alocc", idx_root, {"rho": 1.0})
    result = run_cli("train", "--config", config, "--no-progress", "--no-eval", "--epochs", 20)
    assert result.exit_code == 0, result.output
    assert "trained 4 steps" in result.output and "stopped by the detector's criterion" in result.output
