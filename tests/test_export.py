"""`inspector export --onnx` and `inspector info`: one checked, self-describing ONNX file per trained run."""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from export.parity import ParityError
from export.pipeline import export_detector
from export.writer import write_atomic
from inspector.artifact import INPUT_NAME, MAP_OUTPUT, METADATA_KEY, SCORE_OUTPUT, ModelMetadata
from inspector.cli import cli
from inspector.preprocess import prepare_batch
from training.detectors import build_detector, detector_names, get_detector_class

torch.set_num_threads(1)


def tiny_options(name: str) -> dict[str, int]:
    """Every width knob of a detector's constructor at 4 channels, so any detector exports in a second."""
    parameters = inspect.signature(get_detector_class(name).__init__).parameters
    return {key: 4 for key in parameters if key == "width" or key.endswith("_width")}


def textured_images(count: int, size: tuple[int, int] = (40, 48)) -> list[np.ndarray]:
    """RGB uint8 images of stripes and blobs, larger than the model input so the resize is exercised."""
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    images = []
    for index in range(count):
        stripes = 127 + 100 * np.sin(cols / (2 + index) + rows / 7)
        blob = 80 * np.exp(-((rows - rng.integers(size[0])) ** 2 + (cols - rng.integers(size[1])) ** 2) / 40)
        channels = [stripes + blob, stripes[::-1] * 0.8, np.full(size, 60 + 20 * index)]
        images.append(np.clip(np.stack(channels, axis=2), 0, 255).astype(np.uint8))
    return images


@pytest.mark.parametrize("name", detector_names())
def test_every_registered_detector_exports_through_the_one_path(name):
    detector = build_detector(name, (32, 32), 3, tiny_options(name))
    images = prepare_batch(textured_images(5), (32, 32), 3)

    checked = export_detector(detector, images, 0.5, 0.5, "textured test images", log=lambda line: None)

    assert checked.parity.passed
    assert checked.parity.batch_sizes == [1, 4]
    assert set(checked.parity.by_batch_size) == {"1", "4"}
    assert sorted(graph.name for graph in checked.components) == sorted(detector.components())
    session = ort.InferenceSession(checked.model.onnx_bytes, providers=["CPUExecutionProvider"])
    for batch_size in (1, 3):
        score, anomaly_map = session.run([SCORE_OUTPUT, MAP_OUTPUT], {INPUT_NAME: images[:batch_size]})
        assert score.shape == (batch_size,) and anomaly_map.shape == (batch_size, 1, 32, 32)


def test_a_wrong_export_fails_parity_saying_by_how_much(monkeypatch):
    import export.parity as parity

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
    with pytest.raises(ParityError, match=r"anomaly_map differs by 0\.01 \(allowed 0\.0001, 100\.0x over\)"):
        export_detector(detector, prepare_batch(textured_images(2), (32, 32), 3), 0.5, 0.5, "test", log=print)


def test_an_interrupted_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")

    def interrupted(_descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"new model, half written")
    assert target.read_bytes() == b"previous model"
    assert [path.name for path in tmp_path.iterdir()] == ["model.onnx"]
