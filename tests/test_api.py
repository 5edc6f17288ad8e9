"""The Python API (`from inspector import load_model`): score images, iterate over sources, one record."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from runtime_images import part, write_png, write_video
from runtime_models import build_deviation_model

import inspector
from inspector.cli import cli
from inspector.errors import ImageReadError, InspectorError

SPOT = (80, 20, 24, 30)  # x, y, width, height


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_deviation_model(tmp_path_factory.mktemp("model") / "model.onnx")


@pytest.fixture(scope="module")
def model(model_path):
    return inspector.load_model(model_path, device="cpu")


def test_import_inspector_stays_light_and_loads_the_api_on_first_use():
    code = (
        "import sys, inspector; heavy = [m for m in ('onnxruntime', 'cv2', 'numpy') if m in sys.modules]; "
        "assert not heavy, heavy; from inspector import load_model, Model, Result; "
        "assert 'onnxruntime' in sys.modules; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_score_one_image_from_a_path_or_an_array_in_either_colour_order(tmp_path, model):
    image = part(96, 128, spot=SPOT)
    path = write_png(tmp_path / "scratch.png", image)

    from_path = model.score(path)
    from_rgb = model.score(image)
    from_bgr = model.score(cv2.imread(str(path)), bgr=True)

    assert from_path.path == str(path) and from_rgb.path is None
    for result in (from_path, from_rgb, from_bgr):
        assert result.ok and result.anomalous and result.verdict == "anomalous"
        assert result.score > 0.9 and result.raw_score == pytest.approx(0.5, abs=0.01)
        assert (result.width, result.height) == (128, 96)
        assert result.anomaly_map.shape == (32, 32) and 0 <= result.anomaly_map.min() <= 1
        assert result.full_anomaly_map().shape == (96, 128)
        region = result.regions[0]
        assert abs(region.x - SPOT[0]) <= 3 and abs(region.y - SPOT[1]) <= 3
    assert from_rgb.to_record() == from_bgr.to_record()
    normal = model.score(part(64, 64))
    assert not normal.anomalous and normal.verdict == "normal" and normal.regions == []


def test_score_a_batch_a_list_and_a_missing_file(tmp_path, model):
    batch = np.stack([part(40, 40), part(40, 40, spot=(5, 5, 10, 10)), part(40, 40)])
    results = model.score(batch, batch_size=2)
    assert [result.anomalous for result in results] == [False, True, False]
    mixed = model.score([write_png(tmp_path / "a.png", part(30, 50)), part(20, 20, spot=(2, 2, 8, 8))])
    assert [result.verdict for result in mixed] == ["normal", "anomalous"]
    assert model.score([]) == []
    with pytest.raises(ImageReadError, match="missing.png"):
        model.score(tmp_path / "missing.png")


def test_threshold_changes_the_verdict_not_the_score(model):
    faint = part(64, 64)
    faint[20:40, 20:40] = 205  # normalised about 0.6
    at_default = model.score(faint)
    model.threshold = 0.7
    try:
        lenient = model.score(faint)
    finally:
        model.threshold = 0.5
    assert at_default.anomalous and not lenient.anomalous
    assert at_default.raw_score == lenient.raw_score
    with pytest.raises(InspectorError, match="threshold"):
        model.threshold = 2.0


def test_the_api_gives_inspect_s_own_record_for_the_same_image(tmp_path, model, model_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(photos / "scratch.png", part(96, 128, spot=SPOT))
    result = CliRunner().invoke(
        cli, ["inspect", str(photos), "--model", str(model_path), "--out", str(tmp_path / "out"), "-q"]
    )
    assert result.exit_code == 0, result.output
    reported = json.loads((tmp_path / "out" / "report.jsonl").read_text())

    scored = model.score(photos / "scratch.png")
    scored.path = "scratch.png"
    record = scored.to_record()
    for key in ("status", "label", "score", "raw_score", "width", "height", "regions", "path"):
        assert record[key] == reported[key], key
    assert set(record) == set(reported) - {"time_ms"}  # the one field only a folder run measures


def test_stream_a_video_yields_every_frame_in_order_with_its_number(tmp_path, model):
    video = write_video(tmp_path / "line.avi", frames=12, defect_frames=range(4, 7))
    results = list(model.stream(video))
    assert [result.frame for result in results] == list(range(12))
    assert [result.frame for result in results if result.anomalous] == [4, 5, 6]
    assert all(result.source == str(video) and result.latency >= 0 for result in results)
    overlay = results[5].plot()
    assert overlay.shape == (96, 128, 3) and overlay.dtype == np.uint8
    saved = results[5].save(tmp_path / "frame5.jpg")
    assert cv2.imread(str(saved)).shape == (96, 128, 3)
    assert len(list(model.stream(video, max_frames=3))) == 3


def test_stream_and_predict_a_folder_name_each_file(tmp_path, model):
    frames = tmp_path / "frames"
    (frames / "sub").mkdir(parents=True)
    write_png(frames / "a.png", part(30, 30))
    write_png(frames / "b.png", part(30, 30, spot=(5, 5, 10, 10)))
    write_png(frames / "sub" / "c.png", part(30, 30))

    flat = list(model.stream(frames))
    assert [(result.path, result.verdict) for result in flat] == [("a.png", "normal"), ("b.png", "anomalous")]
    deep = model.predict(frames, recursive=True)
    assert [result.path for result in deep] == ["a.png", "b.png", "sub/c.png"]
    record = deep[1].to_record()
    assert record["path"] == "b.png" and record["frame"] == 1 and record["label"] == "anomalous"
    generator = model.predict(frames, stream=True)
    assert not isinstance(generator, list) and next(generator).path == "a.png"
    generator.close()  # the capture thread stops and the source is released
    assert [r.anomalous for r in model(np.stack([part(20, 20), part(20, 20, spot=(1, 1, 9, 9))]))] == [
        False,
        True,
    ]


def test_predict_refuses_to_list_a_source_that_never_ends(model):
    with pytest.raises(InspectorError, match="never ends"):
        model.predict(0)
    with pytest.raises(InspectorError, match="no such camera index, video file"):
        next(model.stream("/nowhere/clip.mp4"))
