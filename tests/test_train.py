"""Training end to end: `inspector train` / `inspector eval` on tiny generated data, checkpoints, resume,
Ctrl-C, and bad input. Real detectors, a few steps at 32x32."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from inspector.cli import cli
from inspector.config import load_config
from inspector.errors import InspectorError
from inspector.preprocess import prepare_batch, read_image
from inspector.training.batchnorm import refresh_best_batchnorm
from inspector.training.checkpoint import (
    FORMAT_VERSION,
    checkpoint_path,
    load_checkpoint,
    load_detector,
    save_checkpoint,
)
from inspector.training.data.synthetic import generate_dataset
from inspector.training.detectors.rdna import RDNA
from inspector.training.device import resolve_device
from inspector.training.evaluate import evaluate_run, score_samples
from inspector.training.trainer import train

torch.set_num_threads(1)  # a shared 2-core machine: more threads only contend

TINY_RDNA = {"reconstruction_width": 4, "segmentation_width": 4, "discriminator_width": 4}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    """A tiny built-in dataset (10 train, 2 normal + 5 defective test images at 32 px) and 3 textures."""
    root = tmp_path_factory.mktemp("data")
    generate_dataset(
        root / "surfaces",
        categories=["fabric"],
        image_size=32,
        train_count=10,
        test_good=2,
        test_defect_per_kind=1,
    )
    textures = root / "textures"
    textures.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        cv2.imwrite(str(textures / f"t{index}.png"), rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    return {"root": root / "surfaces", "textures": textures}


def write_config(folder: Path, dataset: dict[str, Path], **changes) -> Path:
    """A user's tiny config file: RDNA at widths 4, 32x32, 3 epochs of 2 steps, data on the tiny set."""
    values = {
        "name": "tiny",
        "detector": "rdna",
        "detector_options": dict(TINY_RDNA),
        "input_size": [32, 32],
        "data": {
            "format": "synthetic",
            "root": str(dataset["root"]),
            "category": "fabric",
            "anomaly_source": str(dataset["textures"]),
            "workers": 0,
        },
        "epochs": 3,
        "batch_size": 4,
        "lr": 0.001,
        "device": "cpu",
        "out": str(folder / "runs"),
        "val_every_steps": 2,
    }
    for key, value in changes.items():
        if key == "data":
            values["data"].update(value)
        else:
            values[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def run_cli(*args: str):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def history_steps(run_dir: Path) -> list[int]:
    with (run_dir / "history.csv").open(newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def test_train_command_writes_the_whole_run_directory_and_eval_reproduces_it(tmp_path, dataset):
    config_path = write_config(tmp_path, dataset)
    result = run_cli("train", "--config", config_path, "--no-progress")

    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    assert f"run: {run_dir}" in result.output
    assert "image: AUROC" in result.output and "pixel: AUROC" in result.output
    for name in (
        "config.yaml",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "history.csv",
        "metrics.json",
        "calibration.json",
        "plots/loss_curves.png",
        "plots/roc.png",
        "plots/score_histogram.png",
        "plots/samples.png",
    ):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.rglob("*.tmp")), "no temporary files left behind"

    # config.yaml is the fully resolved config: loading it gives the run's settings back.
    saved = load_config(run_dir / "config.yaml")
    assert saved.detector_options == TINY_RDNA and saved.name == "tiny" and saved.epochs == 3

    # One history row per step (3 epochs of 9 training images in batches of 4), losses and validation.
    with (run_dir / "history.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "mse", "ssim", "focal", "val_loss", "lr", "elapsed"} <= set(rows[0])
    assert all(float(row["val_loss"]) > 0 for row in rows if int(row["step"]) % 2 == 0)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "image_auroc",
        "image_ap",
        "image_f1",
        "fpr_at_95_tpr",
        "pixel_auroc",
        "pixel_ap",
        "aupro",
        "pixel_f1",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["images"]["test"] == 7 and metrics["images"]["test_anomalous"] == 5
    assert metrics["checkpoint"] == "best" and metrics["seconds"] > 0
    calibration = json.loads((run_dir / "calibration.json").read_text())
    assert calibration["method"] == "quantile" and calibration["data"]["split"] == "val"
    assert calibration["image_threshold"] == metrics["image_threshold"]

    # The checkpoint runs no pickled code on load, and holds what a resume and an export need.
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 6 and state["format_version"] == FORMAT_VERSION
    assert state["detector"] == "rdna" and state["input_size"] == [32, 32] and state["channels"] == 3
    assert set(state["optimizer"]["optimizers"]) == {
        "generator",
        "reconstruction_discriminator",
        "mask_discriminator",
    }
    assert {"torch", "numpy", "python"} <= set(state["rng"])

    # Evaluating again, with the data moved elsewhere, scores the same checkpoint the same way.
    moved = shutil.copytree(dataset["root"], tmp_path / "moved")
    again = run_cli("eval", run_dir, "--data", moved, "--no-plots")
    assert again.exit_code == 0, again.output
    remeasured = json.loads((run_dir / "metrics.json").read_text())
    assert remeasured["data"]["root"] == str(moved)
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_threshold", "pixel_threshold"):
        assert remeasured[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_ctrl_c_leaves_a_resumable_run_that_continues_exactly_where_it_stopped(
    tmp_path, dataset, monkeypatch
):
    # The uninterrupted run, for reference.
    reference = load_config(write_config(tmp_path / "reference", dataset))
    reference_dir = train(reference, progress=False, evaluate=False, log=lambda line: None)

    # The same run, with Ctrl-C pressed during step 3 (mid-epoch: 2 steps per epoch).
    original_step = RDNA.training_step
    calls = {"count": 0}

    def press_ctrl_c_on_step_3(self, batch):
        calls["count"] += 1
        if calls["count"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original_step(self, batch)

    monkeypatch.setattr(RDNA, "training_step", press_ctrl_c_on_step_3)
    config_path = write_config(tmp_path / "interrupted", dataset)
    result = run_cli("train", "--config", config_path, "--no-progress", "--no-eval")
    run_dir = tmp_path / "interrupted" / "runs" / "tiny"
    assert result.exit_code == 130, result.output
    assert f"inspector train --resume {run_dir}" in result.output
    assert load_checkpoint(checkpoint_path(run_dir, "last"))["step"] == 3
    assert not (run_dir / "metrics.json").exists()
    monkeypatch.setattr(RDNA, "training_step", original_step)

    resumed = run_cli("train", "--resume", run_dir, "--no-progress", "--no-eval")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "at step 3" in resumed.output
    assert history_steps(run_dir) == [1, 2, 3, 4, 5, 6]

    expected = load_checkpoint(checkpoint_path(reference_dir, "last"))
    got = load_checkpoint(checkpoint_path(run_dir, "last"))
    assert got["step"] == expected["step"] == 6
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    for name, optimizer in expected["optimizer"]["optimizers"].items():
        for index, state in optimizer["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(
                    got["optimizer"]["optimizers"][name]["state"][index][key], value, rtol=1e-5, atol=1e-7
                )
        lrs = [group["lr"] for group in optimizer["param_groups"]]
        assert [group["lr"] for group in got["optimizer"]["optimizers"][name]["param_groups"]] == lrs


def test_a_time_limit_stops_cleanly_with_a_resumable_checkpoint(tmp_path, dataset):
    config = load_config(write_config(tmp_path, dataset, time_limit_minutes=1e-6, epochs=50))
    run_dir = train(config, progress=False, evaluate=False, log=lambda line: None)
    state = load_checkpoint(checkpoint_path(run_dir, "last"))
    assert state["step"] == 1 and state["total_steps"] == 100
    assert checkpoint_path(run_dir, "best").is_file()


def test_a_detector_without_synthetic_anomalies_trains_and_plots_its_prior_samples(tmp_path, dataset):
    config = load_config(
        write_config(
            tmp_path,
            dataset,
            detector="memvae",
            epochs=1,
            name="vae",
            detector_options={"base_width": 4, "max_width": 8, "hidden_dim": 16},
        )
    )
    run_dir = train(config, progress=False, log=lambda line: None)
    assert (run_dir / "plots" / "prior_samples.png").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0


def test_a_new_run_never_overwrites_an_existing_one(tmp_path, dataset):
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "notes.txt").write_text("mine")
    config = load_config(write_config(tmp_path, dataset, max_steps=1))
    run_dir = train(config, progress=False, evaluate=False, log=lambda line: None)
    assert run_dir.name == "tiny-2"
    assert (tmp_path / "runs" / "tiny" / "notes.txt").read_text() == "mine"


def test_score_samples_uses_the_shared_preprocessing_and_the_scoring_graph(dataset):
    detector = RDNA((32, 32), 3, **TINY_RDNA).eval()
    images = sorted((dataset["root"] / "fabric" / "test").rglob("*.png"))[:3]
    from inspector.training.data.samples import Sample

    scores, maps = score_samples(
        detector, [Sample(path) for path in images], (32, 32), 3, batch_size=2, device="cpu"
    )
    with torch.no_grad():
        expected_scores, expected_maps = detector(
            torch.from_numpy(prepare_batch([read_image(path) for path in images], (32, 32), 3))
        )
    np.testing.assert_allclose(scores, expected_scores.numpy(), atol=1e-6)
    np.testing.assert_allclose(maps, expected_maps.numpy()[:, 0], atol=1e-6)


# --- checkpoints and devices ------------------------------------------------------------------------------


def test_an_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = load_config(None, {"detector": "rdna", "detector_options": TINY_RDNA, "input_size": [32, 32]})
    detector = RDNA((32, 32), 3, **TINY_RDNA)
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, detector, config, epoch=0, step=5, best_val_loss=None)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError):
        save_checkpoint(path, detector, config, epoch=1, step=9, best_val_loss=0.5)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_load_detector_rejects_missing_unknown_and_incompatible_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(InspectorError, match="no such run directory"):
        load_detector(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    with pytest.raises(InspectorError, match="no checkpoint at"):
        load_detector(run_dir)

    config = load_config(None, {"detector": "rdna", "detector_options": TINY_RDNA, "input_size": [32, 32]})
    config.save(run_dir / "config.yaml")
    save_checkpoint(
        checkpoint_path(run_dir, "last"),
        RDNA((32, 32), 3, **TINY_RDNA),
        config,
        epoch=0,
        step=1,
        best_val_loss=None,
    )
    with pytest.raises(InspectorError, match="pass --checkpoint last"):
        load_detector(run_dir, "best")
    detector, _, state = load_detector(run_dir, "last")
    assert isinstance(detector, RDNA) and not detector.training and state["step"] == 1

    state["detector"] = "no_such_detector"
    torch.save(state, checkpoint_path(run_dir, "best"))
    with pytest.raises(InspectorError, match="unknown detector 'no_such_detector'"):
        load_detector(run_dir, "best")
    state["detector"], state["format_version"] = "rdna", FORMAT_VERSION + 1
    torch.save(state, checkpoint_path(run_dir, "best"))
    with pytest.raises(InspectorError, match="checkpoint format"):
        load_detector(run_dir, "best")
    checkpoint_path(run_dir, "best").write_bytes(b"not a checkpoint")
    with pytest.raises(InspectorError, match="not a readable inspector checkpoint"):
        load_detector(run_dir, "best")


def test_resolve_device_prefers_what_is_present_and_names_what_is_missing():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(InspectorError, match="device 'cuda' requested"):
            resolve_device("cuda")
    with pytest.raises(InspectorError, match="unknown device"):
        resolve_device("tpu")


# --- bad input: exit 2, one line, no traceback, nothing lost -------------------------------------------


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def broken_copy(dataset: dict[str, Path], target: Path) -> Path:
    """The tiny dataset with its training images replaced by bytes that are no image; returns their folder."""
    shutil.copytree(dataset["root"], target)
    folder = target / "fabric" / "train" / "good"
    for path in folder.glob("*.png"):
        path.write_bytes(b"this is not a png")
    return folder


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (["--format", "mvtec", "--data", "{tmp}/nowhere", "--category", "fabric"], ["nowhere", "not found"]),
        (["--format", "mvtec", "--data", "{empty}", "--category", "fabric"], ["holds no images"]),
        (["--format", "mvtec", "--data", "{root}", "--category", "bottle"], ["'bottle'", "fabric"]),
        (["--detector", "no_such_detector"], ["unknown detector 'no_such_detector'", "rdna"]),
        (["--input-size", "4x"], ["--input-size"]),
    ],
    ids=["missing-folder", "empty-folder", "unknown-category", "unknown-detector", "bad-size"],
)
def test_bad_input_is_one_error_line_and_leaves_no_run_behind(tmp_path, dataset, arguments, fragments):
    (tmp_path / "empty" / "fabric" / "train" / "good").mkdir(parents=True)
    values = {"{tmp}": str(tmp_path), "{empty}": str(tmp_path / "empty"), "{root}": str(dataset["root"])}
    for placeholder, value in values.items():
        arguments = [argument.replace(placeholder, value) for argument in arguments]
    result = run_cli("train", "--config", write_config(tmp_path, dataset), *arguments)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_names_the_file(tmp_path, dataset, workers):
    broken = broken_copy(dataset, tmp_path / "data")
    config_path = write_config(tmp_path, dataset, data={"root": str(tmp_path / "data"), "workers": workers})
    result = run_cli("train", "--config", config_path, "--no-progress")
    assert_one_line_error(result, str(broken), ".png")
    assert not (tmp_path / "runs" / "tiny").exists(), "a run that never started is not left behind"


def test_bad_input_when_resuming_loses_nothing_in_the_run(tmp_path, dataset):
    run_dir = train(
        load_config(write_config(tmp_path, dataset, max_steps=2)),
        progress=False,
        evaluate=False,
        log=lambda line: None,
    )
    evaluate_run(run_dir, plots=False, log=lambda line: None)
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    broken = broken_copy(dataset, tmp_path / "data")

    result = run_cli("train", "--resume", run_dir, "--max-steps", "6", "--data", tmp_path / "data")
    assert_one_line_error(result, str(broken), "--resume")
    result = run_cli("train", "--resume", run_dir, "--detector", "draem")
    assert_one_line_error(result, "--detector", "cannot change")
    result = run_cli("train", "--resume", tmp_path / "not_a_run")
    assert_one_line_error(result, "not a run directory")

    for path, data in before.items():
        assert path.is_file(), path
        if path.suffix == ".json":  # the results of the finished run are untouched
            assert path.read_bytes() == data, path
    assert load_checkpoint(checkpoint_path(run_dir, "last"))["step"] == 2


def test_training_ends_by_recomputing_best_batchnorm_statistics_and_nothing_else(
    tmp_path, dataset, monkeypatch
):
    options = {**TINY_RDNA, "batchnorm_momentum": 0.1}
    logged: list[str] = []
    run_dir = train(
        load_config(write_config(tmp_path / "refreshed", dataset, detector_options=options)),
        progress=False,
        evaluate=False,
        log=logged.append,
    )
    monkeypatch.setattr(RDNA, "recompute_batchnorm", False)
    as_saved_dir = train(
        load_config(write_config(tmp_path / "as_saved", dataset, detector_options=options)),
        progress=False,
        evaluate=False,
        log=lambda line: None,
    )

    refreshed = load_checkpoint(checkpoint_path(run_dir, "best"))
    as_saved = load_checkpoint(checkpoint_path(as_saved_dir, "best"))
    assert refreshed["batchnorm_refreshed_images"] == 8  # 10 training images in batches of 4
    assert "batchnorm_refreshed_images" not in as_saved
    assert any("batch-norm statistics" in line and "8 training images" in line for line in logged)
    statistics = [name for name in as_saved["model"] if name.endswith(("running_mean", "running_var"))]
    scoring_path = [name for name in statistics if name.startswith(("reconstructor.", "segmenter."))]
    assert scoring_path and len(scoring_path) < len(statistics)  # the discriminators have batch norm too
    for name, tensor in as_saved["model"].items():
        if name in scoring_path:
            assert not torch.allclose(refreshed["model"][name], tensor), name
        elif not name.endswith("num_batches_tracked"):
            # The weights, and the statistics of the discriminators (not on the scoring path), are untouched.
            torch.testing.assert_close(refreshed["model"][name], tensor, msg=name)
    monkeypatch.undo()
    notes = evaluate_run(as_saved_dir, plots=False, log=lambda line: None)["notes"]
    assert any("batch-norm statistics" in note and "--resume" in note for note in notes)
    notes = evaluate_run(run_dir, plots=False, log=lambda line: None)["notes"]
    assert not any("batch-norm statistics" in note for note in notes)
    # The refresh is reproducible: doing it again gives the same statistics.
    refresh_best_batchnorm(run_dir)
    again = load_checkpoint(checkpoint_path(run_dir, "best"))
    for name in statistics:
        torch.testing.assert_close(again["model"][name], refreshed["model"][name], msg=name)


@pytest.mark.parametrize("score, refreshed", [("reconstruction", True), ("discriminator", False)])
def test_the_adversarial_vae_refreshes_batchnorm_only_when_scored_by_reconstruction(
    tmp_path, dataset, score, refreshed
):
    options = {"base_width": 4, "max_width": 8, "latent_dim": 8, "score": score}
    config = load_config(
        write_config(tmp_path, dataset, detector="advvae", epochs=1, name="avae", detector_options=options)
    )
    run_dir = train(config, progress=False, evaluate=False, log=lambda line: None)
    state = load_checkpoint(checkpoint_path(run_dir, "best"))
    assert ("batchnorm_refreshed_images" in state) is refreshed


def test_sigterm_saves_a_resumable_checkpoint_like_ctrl_c(tmp_path, dataset, monkeypatch):
    original_step = RDNA.training_step
    calls = {"count": 0}

    def terminate_on_step_2(self, batch):
        calls["count"] += 1
        if calls["count"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what docker stop, systemd and timeout send
        return original_step(self, batch)

    monkeypatch.setattr(RDNA, "training_step", terminate_on_step_2)
    result = run_cli("train", "--config", write_config(tmp_path, dataset), "--no-progress", "--no-eval")
    run_dir = tmp_path / "runs" / "tiny"
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert load_checkpoint(checkpoint_path(run_dir, "last"))["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_a_crash_loses_at_most_the_checkpoint_cadence(tmp_path, dataset, monkeypatch):
    original_step = RDNA.training_step
    calls = {"count": 0}

    def crash_on_step_5(self, batch):
        calls["count"] += 1
        if calls["count"] == 5:
            raise MemoryError("the machine ran out of memory")
        return original_step(self, batch)

    monkeypatch.setattr(RDNA, "training_step", crash_on_step_5)
    config = load_config(write_config(tmp_path, dataset, checkpoint_every_steps=2))
    with pytest.raises(MemoryError):
        train(config, progress=False, evaluate=False, log=lambda line: None)
    assert load_checkpoint(checkpoint_path(config.run_dir, "last"))["step"] == 4


def test_resume_falls_back_to_best_and_clears_temporary_leftovers(tmp_path, dataset):
    config = load_config(write_config(tmp_path, dataset, epochs=1))
    run_dir = train(config, progress=False, evaluate=False, log=lambda line: None)
    checkpoint_path(run_dir, "last").unlink()  # killed before last.pt was ever written
    leftover = run_dir / "checkpoints" / ".last.pt.abc123.tmp"
    leftover.write_bytes(b"")
    result = run_cli("train", "--resume", run_dir, "--epochs", "2", "--no-progress", "--no-eval")
    assert result.exit_code == 0, result.output
    assert "resuming from best.pt" in result.output
    assert load_checkpoint(checkpoint_path(run_dir, "last"))["step"] == 4
    assert not leftover.exists()


def test_the_learning_rate_schedule_follows_whichever_budget_binds():
    from inspector.training.trainer import _progress

    assert _progress(step=10, total_steps=100, elapsed=30.0, time_limit=60.0) == 0.5  # time binds
    assert _progress(step=90, total_steps=100, elapsed=30.0, time_limit=60.0) == 0.9  # steps bind
    assert _progress(step=10, total_steps=100, elapsed=30.0, time_limit=None) == 0.1
    detector = RDNA((32, 32), 3, **TINY_RDNA)
    detector.configure_optimizers(lr=1e-3, total_steps=100)
    rates = []
    for progress in (0.0, 0.85, 0.95, 0.5):
        detector.set_progress(progress)
        rates.append([group["lr"] for opt in detector.optimizers.values() for group in opt.param_groups])
    assert all(rate == pytest.approx(1e-3) for rate in rates[0] + rates[3])
    assert all(rate == pytest.approx(2e-4) for rate in rates[1])
    assert all(rate == pytest.approx(4e-5) for rate in rates[2])


def test_a_time_limit_that_cuts_the_planned_steps_is_reported(tmp_path, dataset):
    config = load_config(write_config(tmp_path, dataset, time_limit_minutes=1e-6, epochs=50))
    lines = []
    run_dir = train(config, progress=False, evaluate=True, log=lines.append)
    assert any("cut the run at step 1 of the 100 planned" in line for line in lines)
    training = json.loads((run_dir / "metrics.json").read_text())["training"]
    assert (training["steps"], training["planned_steps"], training["stopped_by"]) == (1, 100, "time limit")


def test_training_on_crops_scores_whole_images(tmp_path, dataset, monkeypatch):
    shapes = []
    original_step = RDNA.training_step

    def record(self, batch):
        shapes.append(tuple(batch["augmented"].shape[-2:]))
        return original_step(self, batch)

    monkeypatch.setattr(RDNA, "training_step", record)
    config = load_config(write_config(tmp_path, dataset, crop_size=16, epochs=1))
    run_dir = train(config, progress=False, evaluate=True, log=lambda line: None)
    assert shapes and set(shapes) == {(16, 16)}
    detector, _, _ = load_detector(run_dir)
    score, anomaly_map = detector.eval()(torch.rand(2, 3, 32, 32))
    assert anomaly_map.shape == (2, 1, 32, 32) and score.shape == (2,)
