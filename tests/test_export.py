"""`inspector export --onnx` and `inspector info`: one checked, self-describing ONNX file per trained run."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from runtime_images import textured_images

from inspector.artifact import INPUT_NAME, MAP_OUTPUT, METADATA_KEY, SCORE_OUTPUT, ModelMetadata
from inspector.cli import cli
from inspector.export.parity import ParityError
from inspector.export.pipeline import export_detector
from inspector.io import atomic_write_bytes
from inspector.preprocess import prepare_batch
from inspector.training.detectors import build_detector, get_detector_class

torch.set_num_threads(1)


def tiny_options(name: str) -> dict[str, int]:
    """Every width knob of a detector's constructor at 4 channels, so any detector exports in a second."""
    parameters = inspect.signature(get_detector_class(name).__init__).parameters
    return {key: 4 for key in parameters if key == "width" or key.endswith("_width")}


def test_a_wrong_export_fails_parity_saying_by_how_much(monkeypatch):
    from inspector.export import parity

    detector = build_detector("draem", (32, 32), 3, tiny_options("draem"))
    real_session = parity.onnx_session

    class OffByOneHundredth:
        """An onnxruntime session whose anomaly maps are off by 0.01 (e.g. a missing normalisation)."""

        def __init__(self, onnx_bytes):
            self.session = real_session(onnx_bytes)

        def run(self, names, feeds):
            score, anomaly_map = self.session.run(names, feeds)
            return score, anomaly_map + 0.01

    monkeypatch.setattr(parity, "onnx_session", OffByOneHundredth)
    with pytest.raises(
        ParityError, match=r"anomaly_map differs by 0\.01 \(allowed ([0-9.e+-]+), [0-9.]+x over\)"
    ) as raised:
        export_detector(detector, prepare_batch(textured_images(2), (32, 32), 3), 0.5, 0.5, "test", log=print)
    # The measured float32 noise of a 4-channel net at 32x32 is tiny: the allowance is far below 0.01.
    assert float(re.search(r"allowed ([0-9.e+-]+)", str(raised.value)).group(1)) < 1e-4


def test_an_interrupted_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")

    def interrupted(_descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new model, half written")
    assert target.read_bytes() == b"previous model"
    assert [path.name for path in tmp_path.iterdir()] == ["model.onnx"]


# --- a trained run, exported through the command line ------------------------------------------------------


def train_tiny_run(root: Path, detector: str, steps: int = 3, options: dict | None = None) -> Path:
    """Train ``detector`` for 3 steps on a tiny generated dataset (48x48 images, 32x32 input), then calibrate.

    Plots are left out: they are not under test here and cost seconds on a 2-core machine.
    """
    from inspector.config import load_config
    from inspector.training.data.synthetic import generate_dataset
    from inspector.training.evaluate import evaluate_run
    from inspector.training.trainer import train

    data_root = root / "data"
    generate_dataset(
        data_root, ["fabric"], image_size=48, train_count=10, test_good=2, test_defect_per_kind=1
    )
    config = load_config(
        None,
        {
            "name": detector,
            "detector": detector,
            "detector_options": options or tiny_options(detector),
            "input_size": [32, 32],
            "data.format": "synthetic",
            "data.root": str(data_root),
            "data.category": "fabric",
            "data.val_fraction": 0.3,
            "data.workers": 0,
            "max_steps": steps,
            "batch_size": 2,
            "val_every_steps": steps,
            "device": "cpu",
            "out": str(root / "runs"),
        },
    )
    run_dir = Path(train(config, progress=False, evaluate=False, log=lambda *args: None))
    evaluate_run(run_dir, plots=False, log=lambda *args: None)
    return run_dir


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Tiny trained and calibrated runs by detector name, each trained once per module."""
    runs: dict[str, Path] = {}

    def trained(name: str) -> Path:
        if name not in runs:
            runs[name] = train_tiny_run(tmp_path_factory.mktemp(name), name)
        return runs[name]

    return trained


@pytest.fixture(scope="module", params=["rdna", "draem"])
def exported(request, trained_runs):
    """(run directory, exported model path, CLI result) for a tiny trained run of each detector."""
    run_dir = trained_runs(request.param)
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--onnx"])
    assert result.exit_code == 0, result.output
    return run_dir, run_dir / "export" / "model.onnx", result


def model_metadata(path: Path) -> ModelMetadata:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ModelMetadata.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY], str(path))


def test_export_prints_parity_and_writes_the_model_and_its_components(exported):
    run_dir, model_path, result = exported
    assert "max |diff| score" in result.output and "max |diff| anomaly_map" in result.output
    assert "decisions changed at the calibrated thresholds" in result.output
    assert f"wrote {model_path}" in result.output
    assert model_path.is_file()
    components = sorted(path.stem for path in (model_path.parent / "components").glob("*.onnx"))
    from inspector.training.checkpoint import load_detector

    detector, _, _ = load_detector(run_dir)
    assert components == sorted(detector.components())
    assert not list(model_path.parent.rglob("*.tmp"))


def test_metadata_carries_the_run_calibration_and_round_trips(exported):
    from inspector.calibration import Calibration

    run_dir, model_path, _ = exported
    metadata = model_metadata(model_path)
    calibration = Calibration.load(run_dir / "calibration.json")
    assert metadata.detector == run_dir.name
    assert metadata.input_size == [32, 32] and metadata.channels == 3
    assert metadata.image_threshold == pytest.approx(calibration.image_threshold)
    assert metadata.pixel_threshold == pytest.approx(calibration.pixel_threshold)
    assert metadata.normalization == {
        "image": [pytest.approx(calibration.image_min), pytest.approx(calibration.image_max)],
        "pixel": [pytest.approx(calibration.pixel_min), pytest.approx(calibration.pixel_max)],
    }
    assert metadata.calibration["method"] == calibration.method
    assert metadata.trained_on["dataset"] == "synthetic" and metadata.trained_on["category"] == "fabric"
    assert metadata.extra["opset"] == 17
    assert metadata.parity["passed"] and metadata.parity["batch_sizes"] == [1, 4]
    assert ModelMetadata.from_json(metadata.to_json()) == metadata


def test_the_onnx_model_matches_torch_on_validation_images_at_batch_1_and_4(exported):
    from inspector.training.checkpoint import load_detector
    from inspector.training.data import build_splits
    from inspector.training.data.dataset import load_rgb

    run_dir, model_path, _ = exported
    detector, config, _ = load_detector(run_dir)
    splits = build_splits(config)
    images = prepare_batch([load_rgb(sample) for sample in (splits.val + splits.test)[:4]], (32, 32), 3)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        torch_scores, torch_maps = (tensor.numpy() for tensor in detector(torch.from_numpy(images)))
    batched = session.run([SCORE_OUTPUT, MAP_OUTPUT], {INPUT_NAME: images})
    one_by_one = [session.run([SCORE_OUTPUT, MAP_OUTPUT], {INPUT_NAME: images[i : i + 1]}) for i in range(4)]
    for scores, maps in (
        batched,
        (np.concatenate([s for s, _ in one_by_one]), np.concatenate([m for _, m in one_by_one])),
    ):
        assert np.abs(scores - torch_scores).max() <= 1e-4
        assert np.abs(maps - torch_maps).max() <= 1e-4


def test_components_load_and_run_in_onnxruntime(exported):
    _, model_path, _ = exported
    for path in sorted((model_path.parent / "components").glob("*.onnx")):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {
            item.name: np.random.default_rng(0).random(
                [3 if not isinstance(d, int) else d for d in item.shape], dtype=np.float32
            )
            for item in session.get_inputs()
        }
        for output in session.run(None, feeds):
            assert output.shape[0] == 3 and np.isfinite(output).all(), path.name


def test_info_prints_metadata_inputs_outputs_opset_and_providers(exported):
    run_dir, model_path, _ = exported
    result = CliRunner().invoke(cli, ["info", str(model_path)])
    assert result.exit_code == 0, result.output
    for expected in (
        f"detector      {run_dir.name}",
        "image float32 [batch, 3, 32, 32]",
        "score float32 [batch]",
        "anomaly_map float32 [batch, 1, 32, 32]",
        "opset         17",
        "CPUExecutionProvider",
        "parity        max |diff| score",
    ):
        assert expected in result.output
    as_json = json.loads(CliRunner().invoke(cli, ["info", str(model_path), "--json"]).output)
    assert ModelMetadata.from_json(json.dumps(as_json["metadata"])) == model_metadata(model_path)
    component = next((model_path.parent / "components").glob("*.onnx"))
    described = CliRunner().invoke(cli, ["info", str(component)])
    assert (
        described.exit_code == 0 and f"component     {component.stem} of {run_dir.name}" in described.output
    )


@pytest.mark.parametrize("exported", ["rdna"], indirect=True)
def test_info_works_with_the_base_install_without_torch_or_onnx(exported):
    _, model_path, _ = exported
    hide_train_extras = "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; "
    command = (
        hide_train_extras
        + f"from inspector.cli import main; sys.argv = ['inspector', 'info', {str(model_path)!r}]; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", command], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "opset         17" in result.stdout and "score float32 [batch]" in result.stdout


def test_info_refuses_a_file_that_is_not_an_inspector_model(tmp_path):
    (tmp_path / "notes.onnx").write_text("not a model")
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "notes.onnx")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'notes.onnx'}: not a loadable ONNX model")


# --- bad input: one line, exit code 2 (1 for a failed parity check), and no half-written model ----------------


@pytest.fixture
def run_copy(trained_runs, tmp_path):
    """A fresh copy of a trained draem run (without any export), for tests that damage it."""
    copy = tmp_path / "run"
    shutil.copytree(trained_runs("draem"), copy, ignore=shutil.ignore_patterns("export"))
    return copy


def export_cli(*args: str):
    return CliRunner().invoke(cli, ["export", *args])


def rewrite_checkpoint(run_dir: Path, **changes) -> None:
    for path in (run_dir / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        state.update(changes)
        torch.save(state, path)


def assert_refused(result, message: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_export_refuses_a_missing_run_directory(tmp_path):
    assert_refused(export_cli(str(tmp_path / "nope"), "--onnx"), "no such run directory")


def test_export_refuses_a_run_without_checkpoint(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    result = export_cli(str(run_copy), "--onnx")
    assert_refused(result, f"error: no checkpoint at {run_copy / 'checkpoints' / 'best.pt'}")
    assert not (run_copy / "export").exists()


def test_export_refuses_a_checkpoint_of_an_unknown_detector(run_copy):
    rewrite_checkpoint(run_copy, detector="autoencoder9000")
    assert_refused(export_cli(str(run_copy), "--onnx"), "unknown detector 'autoencoder9000'; choose one of")


def test_export_refuses_a_checkpoint_of_an_incompatible_format(run_copy):
    rewrite_checkpoint(run_copy, format_version=99)
    assert_refused(export_cli(str(run_copy), "--onnx"), "checkpoint format 99")


def test_export_refuses_an_uncalibrated_run_unless_allowed(run_copy):
    (run_copy / "calibration.json").unlink()
    assert_refused(export_cli(str(run_copy), "--onnx"), "the run was never calibrated (no calibration.json)")
    assert not (run_copy / "export").exists()

    allowed = export_cli(str(run_copy), "--onnx", "--allow-uncalibrated", "--no-components")
    assert allowed.exit_code == 0, allowed.output
    assert "warning:" in allowed.stderr and "calibration: none" in allowed.stderr
    metadata = model_metadata(run_copy / "export" / "model.onnx")
    assert metadata.calibration == {"method": "none"}
    assert "calibration: none" in metadata.extra["warnings"][0]


@pytest.mark.parametrize("exported", ["draem"], indirect=True)
def test_export_never_overwrites_a_model_unless_forced(exported, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(exported[0], run_dir)  # the run with its model.onnx and components/ already exported
    model_path = run_dir / "export" / "model.onnx"
    before = model_path.read_bytes()
    assert_refused(export_cli(str(run_dir), "--onnx"), f"{model_path} already exists; pass --force")
    assert model_path.read_bytes() == before

    forced = export_cli(str(run_dir), "--onnx", "--force", "--no-components")
    assert forced.exit_code == 0, forced.output
    assert model_metadata(model_path).extra["components"] == {}
    assert not list((model_path.parent / "components").glob("*.onnx")), "stale components of the old model"
    assert not list(model_path.parent.rglob("*.tmp"))


def test_export_failing_parity_exits_1_says_by_how_much_and_writes_nothing(run_copy, monkeypatch):
    from inspector.export import parity

    real_session = parity.onnx_session

    class ScoresOffByOneTenth:
        def __init__(self, onnx_bytes):
            self.session = real_session(onnx_bytes)

        def run(self, names, feeds):
            score, anomaly_map = self.session.run(names, feeds)
            return score + 0.1, anomaly_map

    monkeypatch.setattr(parity, "onnx_session", ScoresOffByOneTenth)
    result = export_cli(str(run_copy), "--onnx", "--tolerance", "1e-4")
    assert_refused(result, "score differs by 0.1 (allowed 0.0001, 1000.0x over)", code=1)
    assert not (run_copy / "export" / "model.onnx").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [("--opset=99", "--opset 99 is not supported"), ("--tolerance=0", "--tolerance must be > 0")],
)
def test_export_refuses_bad_options(run_copy, option, message):
    assert_refused(export_cli(str(run_copy), "--onnx", option), message)
