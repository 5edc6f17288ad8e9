"""`inspector eval MODEL.onnx --data DIR`: the metrics of `inspector eval RUN`, torch-free, from the same functions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from runtime_images import part, write_png
from runtime_models import build_deviation_model

from inspector.cli import cli
from inspector.labelled_data import dataset_images

METRIC_KEYS = (
    "image_auroc",
    "image_ap",
    "image_f1",
    "fpr_at_95_tpr",
    "pixel_auroc",
    "pixel_ap",
    "aupro",
    "pixel_f1",
    "false_reject_rate",
    "detection_rate",
    "image_threshold",
    "pixel_threshold",
)


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A tiny DRAEM run trained for 3 steps on the built-in data, calibrated and exported."""
    pytest.importorskip("torch")
    from test_export import train_tiny_run

    run_dir = train_tiny_run(tmp_path_factory.mktemp("eval"), "draem")
    exported = invoke("export", run_dir, "--onnx", "--no-components")
    assert exported.exit_code == 0, exported.output
    return run_dir, run_dir / "export" / "model.onnx", run_dir.parent.parent / "data"


def test_eval_of_the_exported_model_equals_eval_of_the_run_on_the_same_data(exported_run, tmp_path):
    run_dir, model, data = exported_run
    of_run = invoke("eval", run_dir, "--no-plots", "--json")
    assert of_run.exit_code == 0, of_run.output
    # The model knows its category (trained_on), so the folder of categories is enough.
    of_model = invoke("eval", model, "--data", data, "--out", tmp_path / "eval", "--json", "-q")
    assert of_model.exit_code == 0, of_model.output

    run_metrics, model_metrics = json.loads(of_run.stdout), json.loads(of_model.stdout)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == model_metrics
    measured = [key for key in METRIC_KEYS if key in run_metrics]
    assert {"image_auroc", "pixel_auroc", "aupro", "false_reject_rate"} <= set(measured)
    assert [key for key in METRIC_KEYS if key in model_metrics] == measured
    for key in measured:
        assert model_metrics[key] == pytest.approx(run_metrics[key], abs=1e-4), key
    run_images = {key: value for key, value in run_metrics["images"].items() if key != "calibration"}
    assert {key: model_metrics["images"][key] for key in run_images} == run_images
    assert model_metrics["images"]["calibration"] == run_metrics["images"]["calibration"]
    assert model_metrics["calibration"]["method"] == run_metrics["calibration"]["method"]
    assert model_metrics["data"]["category"] == "fabric"
    # The summary is the run's, with the model named instead of the checkpoint.
    assert "test: " in of_model.stderr and f"model {model}" in of_model.stderr


def test_the_torch_free_listing_is_the_training_readers_test_split(exported_run):
    from inspector.config import load_config
    from inspector.training.data import build_splits

    run_dir, _, data = exported_run
    config = load_config(str(run_dir / "config.yaml"))
    expected = [(s.name, s.label, s.mask) for s in build_splits(config).test]
    images, _ = dataset_images(data / "fabric")
    assert [(i.name, i.label, i.mask) for i in images] == expected


def test_eval_model_runs_on_the_base_install_without_torch_or_onnx(tmp_path):
    folder = labelled_folder(tmp_path)
    model = build_deviation_model(tmp_path / "model.onnx")
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; "
        "from inspector.cli import main; "
        f"sys.argv = ['inspector', 'eval', {str(model)!r}, '--data', {str(folder)!r}, '--json', '-q']; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    # The deviation model sees a white spot (raw 0.5) far above its threshold (0.25) and mid-gray below it.
    assert metrics["image_auroc"] == metrics["detection_rate"] == 1.0 and metrics["false_reject_rate"] == 0.0
    assert metrics["pixel_auroc"] == pytest.approx(1.0) and metrics["aupro"] == pytest.approx(1.0)
    assert metrics["images"] == {
        "test": 5,
        "test_normal": 3,
        "test_anomalous": 2,
        "test_anomalous_with_masks": 2,
        "calibration": None,  # the fixture's model does not say how many images it was calibrated on
    }
    assert metrics["data"]["dataset"] == "folder"


def labelled_folder(root):
    """good/ (3 gray parts), defective/scratch/ (2 parts with a white spot) and masks/scratch/ for them."""
    folder = root / "station"
    for sub in ("good", "defective/scratch", "masks/scratch"):
        (folder / sub).mkdir(parents=True)
    for index in range(3):
        write_png(folder / "good" / f"g{index}.png", part(40, 40))
    for index in range(2):
        write_png(
            folder / "defective/scratch" / f"d{index}.png", part(40, 40, spot=(5 + 10 * index, 8, 8, 8))
        )
        mask = np.zeros((40, 40), np.uint8)
        mask[8:16, 5 + 10 * index : 13 + 10 * index] = 255
        write_png(folder / "masks/scratch" / f"d{index}.png", mask)
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "evaluating a model needs --data DIR"),
        (
            ["--data", "{folder}", "--checkpoint", "last"],
            "--checkpoint cannot be used when evaluating a MODEL",
        ),
        (["--data", "{folder}", "--device", "mps"], "--device mps is a torch device"),
        (["--data", "{tmp}"], "no test/ (an MVTec category) nor good/ and defective/ folders"),
        (["--data", "{folder}/good"], "no test/ (an MVTec category)"),
    ],
)
def test_bad_use_of_eval_model_is_one_line_with_exit_code_2(tmp_path, args, message):
    folder = labelled_folder(tmp_path)
    model = build_deviation_model(tmp_path / "model.onnx")
    args = [arg.format(folder=folder, tmp=tmp_path) for arg in args]
    result = invoke("eval", model, *args, "-q")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output


def test_eval_run_refuses_the_options_of_a_model(tmp_path):
    result = invoke("eval", tmp_path, "--out", tmp_path / "x", "--batch-size", "4")
    assert result.exit_code == 2
    assert "--out, --batch-size cannot be used when evaluating a RUN_DIR" in result.output


def test_a_mask_missing_for_a_defective_image_names_the_image(tmp_path):
    folder = labelled_folder(tmp_path)
    (folder / "masks/scratch/d1.png").unlink()
    model = build_deviation_model(tmp_path / "model.onnx")
    result = invoke("eval", model, "--data", folder, "-q")
    assert result.exit_code == 2 and "d1.png has no mask in" in result.output
