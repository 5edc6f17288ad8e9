"""`inspector watch`: video files, folders and live sources, newest-frame capture, reconnects, clean stops."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from runtime_images import part, write_png, write_video
from runtime_models import build_deviation_model

from inspector.cli import cli
from inspector.errors import InspectorError
from inspector.runtime import sources
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model
from inspector.runtime.sources import CaptureSource, FolderSource, FrameReader, Source, open_source
from inspector.runtime.watch import watch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_deviation_model(tmp_path_factory.mktemp("model") / "model.onnx")


def events_of(out_dir):
    return [json.loads(line) for line in (out_dir / "events.jsonl").read_text().splitlines()]


def test_headless_watch_of_a_video_file_scores_every_frame_logs_anomalies_and_ends_cleanly(tmp_path, model):
    video = write_video(tmp_path / "line.avi", frames=30, defect_frames=range(10, 16))
    out = tmp_path / "watch"

    result = CliRunner().invoke(
        cli,
        [
            "watch",
            "--model",
            str(model),
            "--source",
            str(video),
            "--headless",
            "--out",
            str(out),
            "--record",
            str(tmp_path / "annotated.avi"),
        ],
    )

    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ended_by"] == "end of source"
    assert summary["frames_read"] == summary["frames_scored"] == 30 and summary["frames_dropped"] == 0
    events = events_of(out)
    assert [event["frame"] for event in events] == list(range(10, 16))
    assert all(event["label"] == "anomalous" and event["regions"] for event in events)
    region = events[0]["regions"][0]  # the square drawn at x 80-112, y 24-56 of each 128 x 96 frame
    assert abs(region["x"] - 80) <= 3 and abs(region["y"] - 24) <= 3
    assert all((out / event["overlay"]).is_file() for event in events)
    recording = cv2.VideoCapture(str(tmp_path / "annotated.avi"))
    assert int(recording.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    assert recording.get(cv2.CAP_PROP_FPS) == pytest.approx(20.0)
    assert (int(recording.get(cv2.CAP_PROP_FRAME_WIDTH)), int(recording.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (
        128,
        96,
    )
    recording.release()


def test_watch_accepts_a_folder_as_source_and_logs_every_frame_on_request(tmp_path, model):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(4):
        write_png(frames / f"frame_{index}.png", part(40, 50, spot=(5, 5, 10, 10) if index == 2 else None))
    (frames / "broken.png").write_bytes(b"")

    result = CliRunner().invoke(
        cli,
        [
            "watch",
            "--model",
            str(model),
            "--source",
            str(frames),
            "--headless",
            "--events",
            "all",
            "--out",
            str(tmp_path / "out"),
        ],
    )

    assert result.exit_code == 0, result.output
    assert [event["label"] for event in events_of(tmp_path / "out")] == [
        "normal",
        "normal",
        "anomalous",
        "normal",
    ]


class SlowScorer(Scorer):
    """A model slower than the camera: every batch takes ``delay`` seconds."""

    delay = 0.1

    def infer(self, batch):
        time.sleep(self.delay)
        return super().infer(batch)


def test_slow_model_sees_the_newest_frame_and_latency_does_not_grow(tmp_path, model):
    # 60 frames played in real time at 50 FPS (1.2 s) to a model that needs 0.1 s per frame.
    video = write_video(tmp_path / "fast.avi", frames=60, fps=50.0)
    scorer = SlowScorer(load_model(model))

    summary = watch(
        open_source(str(video)),
        scorer,
        tmp_path / "out",
        headless=True,
        realtime=True,
        events="all",
        record=tmp_path / "kept_in_time.avi",
    )

    events = events_of(tmp_path / "out")
    assert summary["ended_by"] == "end of source" and summary["frames_read"] == 60
    assert summary["frames_scored"] < 30 and summary["frames_dropped"] > 30
    assert summary["frames_scored"] + summary["frames_dropped"] == 60
    indices = [event["frame"] for event in events]
    assert indices == sorted(indices) and max(np.diff(indices)) >= 3  # skipped ahead to the newest frame
    # Queueing every frame would age the last ones by seconds; taking the newest keeps each one fresh.
    assert max(event["latency_ms"] for event in events) < 600
    assert indices[-1] >= 50
    # The recording repeats each shown frame in place of the dropped ones: it keeps the video's timeline.
    recording = cv2.VideoCapture(str(tmp_path / "kept_in_time.avi"))
    assert int(recording.get(cv2.CAP_PROP_FRAME_COUNT)) == indices[-1] - indices[0] + 1
    assert recording.get(cv2.CAP_PROP_FPS) == pytest.approx(50.0)
    recording.release()


class FlakyCamera(Source):
    """A live source that drops after 5 frames, refuses the first reopen, then streams again."""

    live = True
    name = "flaky camera"

    def __init__(self):
        self.opens = 0
        self.frames = 0

    def open(self):
        self.opens += 1
        if self.opens == 2:
            raise InspectorError("camera busy")

    def read(self):
        self.frames += 1
        if self.frames == 6:
            return None  # the cable was pulled
        time.sleep(0.005)
        return part(20, 20)


def test_a_dropped_live_source_is_reopened_with_backoff_and_logged(monkeypatch):
    monkeypatch.setattr(sources, "FIRST_BACKOFF_S", 0.1)
    messages = []
    camera = FlakyCamera()
    reader = FrameReader(camera, newest_only=True, notify=messages.append).start()
    try:
        deadline = time.monotonic() + 5.0
        while reader.frames_read < 10 and time.monotonic() < deadline:
            reader.next(timeout=0.1)
    finally:
        reader.stop()
    assert reader.frames_read >= 10 and reader.reconnects == 1 and camera.opens == 3
    reopening = [message for message in messages if "reopening in" in message]
    assert len(reopening) == 2  # the first try failed and the wait doubled
    assert "reopening in 0.1 s" in reopening[0] and "reopening in 0.2 s" in reopening[1]
    assert any("reopened" in message for message in messages)


def test_sources_are_one_idea_camera_index_url_folder_image_or_video(tmp_path):
    write_png(tmp_path / "one.png", part(10, 10))
    video = write_video(tmp_path / "clip.avi", frames=2)
    camera = open_source("0")
    assert isinstance(camera, CaptureSource) and camera.live and camera.target == 0
    stream = open_source("rtsp://192.0.2.1/line")
    assert isinstance(stream, CaptureSource) and stream.live
    assert isinstance(open_source(str(tmp_path)), FolderSource)
    assert isinstance(open_source(str(tmp_path / "one.png")), FolderSource)
    clip = open_source(str(video))
    assert isinstance(clip, CaptureSource) and not clip.live
    with pytest.raises(InspectorError, match="no such camera index, video file"):
        open_source(str(tmp_path / "missing.mp4"))


def test_a_source_that_cannot_be_opened_is_exit_code_2(tmp_path, model):
    (tmp_path / "corrupt.avi").write_bytes(b"not a video at all")
    result = CliRunner().invoke(
        cli,
        [
            "watch",
            "--model",
            str(model),
            "--source",
            str(tmp_path / "corrupt.avi"),
            "--headless",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2 and "cannot open" in result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is for X11/Wayland")
def test_watch_with_a_window_but_no_display_says_to_use_headless(tmp_path, model, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    video = write_video(tmp_path / "clip.avi", frames=2)
    result = CliRunner().invoke(
        cli, ["watch", "--model", str(model), "--source", str(video), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "--headless" in result.stderr


def test_sigterm_stops_watch_cleanly_with_everything_flushed(tmp_path, model):
    video = write_video(tmp_path / "long.avi", frames=400, fps=40.0, defect_frames=range(0, 400, 2))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from inspector.cli import main; main()",
            "watch",
            "--model",
            str(model),
            "--source",
            str(video),
            "--realtime",
            "--headless",
            "--events",
            "all",
            "--out",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 30
    events_file = out / "events.jsonl"
    while time.monotonic() < deadline and not (events_file.exists() and events_file.stat().st_size):
        time.sleep(0.05)  # until the first frames are scored
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ended_by"] == "stopped" and 0 < summary["frames_scored"] < 400
    events = events_of(out)  # every line is whole JSON
    assert len(events) == summary["frames_scored"]
    assert "stopped" in stdout


def test_headless_watch_prints_a_progress_line_with_fps_latency_and_counts(tmp_path, model, monkeypatch):
    from inspector.runtime import watch as watch_module

    monkeypatch.setattr(watch_module, "PROGRESS_SECONDS", 0.0)  # a line per frame
    video = write_video(tmp_path / "line.avi", frames=12, defect_frames=range(0, 12, 4))
    base = [
        "watch",
        "--model",
        str(model),
        "--source",
        str(video),
        "--headless",
        "--out",
        str(tmp_path / "o"),
    ]

    result = CliRunner().invoke(cli, base)
    quiet = CliRunner().invoke(cli, [*base, "--quiet"])

    assert result.exit_code == quiet.exit_code == 0, result.output
    # Not a terminal: one line per update (here every pass of the loop), nothing rewritten in place.
    lines = [line for line in result.stderr.splitlines() if line.startswith("watch: ")]
    counts = [int(line.split()[1]) for line in lines]
    assert counts == sorted(counts) and set(range(1, 13)) <= set(counts)
    assert "watch: 1 frames (0 good, 1 anomalous, 0 dropped), " in result.stderr
    assert lines[-1].startswith("watch: 12 frames (9 good, 3 anomalous, 0 dropped), ")
    fps, latency = re.search(r", ([\d.]+) FPS, latency (\d+) ms$", lines[-1]).groups()
    assert float(fps) > 0 and int(latency) >= 0
    assert "watch: " not in quiet.stderr
