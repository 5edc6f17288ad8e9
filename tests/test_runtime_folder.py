"""`inspector inspect FOLDER`: reports, overlays, thresholds, resume and every awkward file a folder holds."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from runtime_images import (
    BACKGROUND,
    part,
    write_exif_rotated_jpeg,
    write_palette_png,
    write_png,
)
from runtime_models import build_deviation_model

from inspector.cli import cli
from inspector.preprocess import read_image
from inspector.runtime.folder import inspect_folder
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_deviation_model(tmp_path_factory.mktemp("model") / "model.onnx", input_size=(32, 32))


def inspect(*args):
    return CliRunner().invoke(cli, ["inspect", *map(str, args)])


def rows_by_path(out_dir):
    with open(out_dir / "report.csv", encoding="utf-8", newline="") as handle:
        csv_rows = {row["path"]: row for row in csv.DictReader(handle)}
    jsonl = [json.loads(line) for line in (out_dir / "report.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [record["path"] for record in jsonl] == list(csv_rows), (
        "CSV and JSONL list the same images in order"
    )
    return {record["path"]: record for record in jsonl}, csv_rows


def assert_region_at(record, x, y, width, height, tolerance):
    region = record["regions"][0]
    assert abs(region["x"] - x) <= tolerance and abs(region["y"] - y) <= tolerance, region
    assert abs(region["x"] + region["width"] - (x + width)) <= tolerance, region
    assert abs(region["y"] + region["height"] - (y + height)) <= tolerance, region


def test_inspect_folder_writes_reports_overlays_masks_and_summary(tmp_path, model):
    photos = tmp_path / "photos"
    (photos / "line2").mkdir(parents=True)
    write_png(photos / "good_1.png", part(96, 128))
    write_png(photos / "good_2.png", part(96, 128))
    write_png(photos / "scratch.png", part(96, 128, spot=(80, 20, 24, 30)))
    write_png(photos / "line2" / "good_3.png", part(60, 80))
    write_png(photos / "line2" / "dent.png", part(60, 80, spot=(8, 40, 20, 12)))

    result = inspect(photos, "--model", model, "--out", tmp_path / "out", "--recursive", "--masks")

    assert result.exit_code == 0, result.output
    assert "5 scored, 2 anomalous, 0 unreadable" in result.stdout
    records, csv_rows = rows_by_path(tmp_path / "out")
    assert sorted(records) == [
        "good_1.png",
        "good_2.png",
        "line2/dent.png",
        "line2/good_3.png",
        "scratch.png",
    ]
    labels = {path: record["label"] for path, record in records.items()}
    assert labels == {
        "good_1.png": "normal",
        "good_2.png": "normal",
        "line2/good_3.png": "normal",
        "scratch.png": "anomalous",
        "line2/dent.png": "anomalous",
    }
    scratch = records["scratch.png"]
    assert scratch["score"] > 0.9 and scratch["raw_score"] == pytest.approx(0.5, abs=0.01)
    assert len(scratch["regions"]) == 1 and scratch["regions"][0]["peak"] > 0.9
    assert_region_at(scratch, 80, 20, 24, 30, tolerance=3)
    assert_region_at(records["line2/dent.png"], 8, 40, 20, 12, tolerance=3)
    assert records["good_1.png"]["regions"] == [] and records["good_1.png"]["score"] < 0.1
    assert csv_rows["scratch.png"]["n_regions"] == "1" and csv_rows["scratch.png"]["label"] == "anomalous"
    assert float(csv_rows["scratch.png"]["time_ms"]) > 0

    # One overlay per image, at the image's own size; the plain mask marks the scratch.
    for record in records.values():
        overlay = read_image(tmp_path / "out" / record["overlay"])
        assert overlay.shape[:2] == (record["height"], record["width"])
    mask = read_image(tmp_path / "out" / records["scratch.png"]["mask"])[:, :, 0]
    assert mask[35, 92] == 255 and mask[80, 10] == 0

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["scored"], summary["anomalous"], summary["normal"], summary["unreadable"]) == (5, 2, 3, 0)
    assert summary["this_run"]["images"] == 5 and summary["this_run"]["images_per_second"] > 0
    assert len(summary["slowest"]) == 5 and summary["interrupted"] is False

    # Without --recursive only the top level is inspected; --save anomalous writes only the scratch overlay.
    top = inspect(photos, "--model", model, "--out", tmp_path / "top", "--save", "anomalous", "-q")
    assert top.exit_code == 0, top.output
    records, _ = rows_by_path(tmp_path / "top")
    assert sorted(records) == ["good_1.png", "good_2.png", "scratch.png"]
    assert [p.name for p in (tmp_path / "top" / "overlays").iterdir()] == ["scratch.jpg"]


def test_threshold_changes_sensitivity_at_run_time_and_fail_on_anomaly_sets_exit_code(tmp_path, model):
    photos = tmp_path / "photos"
    photos.mkdir()
    faint = part(64, 64)
    faint[20:40, 20:40] = 205  # raw deviation 0.3: normalised 0.6, just above the calibrated 0.5
    write_png(photos / "faint.png", faint)

    default = inspect(photos, "--model", model, "--out", tmp_path / "default", "--fail-on-anomaly", "-q")
    strict = inspect(
        photos,
        "--model",
        model,
        "--out",
        tmp_path / "lenient",
        "--threshold",
        "0.7",
        "--fail-on-anomaly",
        "-q",
    )

    assert default.exit_code == 1, default.output
    assert strict.exit_code == 0, strict.output
    at_default, _ = rows_by_path(tmp_path / "default")
    at_lenient, _ = rows_by_path(tmp_path / "lenient")
    assert at_default["faint.png"]["label"] == "anomalous" and at_lenient["faint.png"]["label"] == "normal"
    # The scores themselves do not move: only the decision does.
    assert at_default["faint.png"]["raw_score"] == at_lenient["faint.png"]["raw_score"]
    assert at_default["faint.png"]["score"] == pytest.approx(0.6, abs=0.02)
    assert len(at_default["faint.png"]["regions"]) == 1
    # The pixel threshold moves the defect mask the same way: above the spot's 0.6, no region is left.
    inspect(photos, "--model", model, "--out", tmp_path / "pixels", "--pixel-threshold", "0.7", "-q")
    at_pixels, _ = rows_by_path(tmp_path / "pixels")
    assert at_pixels["faint.png"]["regions"] == [] and at_pixels["faint.png"]["label"] == "anomalous"
    out_of_range = inspect(photos, "--model", model, "--out", tmp_path / "bad", "--threshold", "3")
    assert out_of_range.exit_code == 2 and "--threshold" in out_of_range.output


def test_interrupted_run_resumes_without_losing_or_repeating_images(tmp_path, model):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(40):
        write_png(
            photos / f"part_{index:02d}.png", part(40, 40, spot=(5, 5, 10, 10) if index % 4 == 0 else None)
        )
    out = tmp_path / "out"
    scorer = Scorer(load_model(model))

    seen = []

    def ctrl_c_after_five(record):
        seen.append(record)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        inspect_folder(photos, scorer, out, batch_size=2, on_record=ctrl_c_after_five)
    first = json.loads((out / "summary.json").read_text())
    assert first["interrupted"] is True and 5 <= first["reported"] < 40
    # A crash in the middle of a write leaves a torn last line: resume must not trip over it.
    with open(out / "report.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"path": "part_11.png", "status": "o')

    again = inspect(photos, "--model", model, "--out", out)
    assert again.exit_code == 2 and "--resume" in again.stderr

    resumed = inspect(photos, "--model", model, "--out", out, "--resume", "-q")
    assert resumed.exit_code == 0, resumed.output
    records, csv_rows = rows_by_path(out)
    assert sorted(records) == [f"part_{index:02d}.png" for index in range(40)]
    assert len(csv_rows) == 40
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == first["reported"] and summary["this_run"]["images"] == 40 - first["reported"]
    assert summary["anomalous"] == 10 and summary["interrupted"] is False


def test_every_awkward_file_is_scored_or_reported_unreadable_and_the_run_goes_on(tmp_path, model):
    photos = tmp_path / "photos"
    photos.mkdir()
    spot = (40, 10, 16, 20)
    write_png(photos / "plain.png", part(64, 96))
    (photos / "empty.png").write_bytes(b"")
    _, jpeg = cv2.imencode(".jpg", part(64, 96))
    (photos / "truncated.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    (photos / "notes.png").write_text("meeting notes, not a picture")
    (photos / "folder.png").mkdir()
    (photos / "readme.txt").write_text("not named like an image: ignored")
    deep = np.full((64, 96), 32896, np.uint16)  # 128 in 8 bits
    deep[10:30, 40:56] = 65535
    write_png(photos / "deep16.png", deep)
    gray = np.full((64, 96), BACKGROUND, np.uint8)
    gray[10:30, 40:56] = 255
    write_png(photos / "gray.png", gray)
    write_palette_png(photos / "palette.png", gray)
    rgba = np.dstack([part(64, 96, spot)[:, :, ::-1], np.linspace(0, 255, 96 * 64).reshape(64, 96)]).astype(
        np.uint8
    )
    _, encoded = cv2.imencode(".png", rgba)
    (photos / "rgba.png").write_bytes(encoded.tobytes())
    # Stored 96 wide and 64 high with the spot at the left; EXIF says: rotate 90° clockwise to display.
    write_exif_rotated_jpeg(photos / "rotated.jpg", part(64, 96, spot=(4, 30, 16, 20)))
    write_png(photos / "large photo ünïcødé 名前.png", part(3000, 5000, spot=(3000, 1000, 400, 300)))
    for suffix in (".bmp", ".tif", ".webp"):
        write_png(photos / f"format{suffix}", part(40, 40, spot=(10, 10, 12, 12)))

    result = inspect(photos, "--model", model, "--out", tmp_path / "out", "-q")

    assert result.exit_code == 0, result.output
    records, _ = rows_by_path(tmp_path / "out")
    assert "readme.txt" not in records
    unreadable = {
        path: record["error"] for path, record in records.items() if record["status"] == "unreadable"
    }
    assert set(unreadable) == {"empty.png", "truncated.jpg", "notes.png", "folder.png"}
    assert "empty" in unreadable["empty.png"] and "directory" in unreadable["folder.png"]
    assert (
        "not a decodable image" in unreadable["truncated.jpg"]
        and "not a decodable image" in unreadable["notes.png"]
    )
    assert records["plain.png"]["label"] == "normal"
    for name in ("deep16.png", "gray.png", "palette.png", "rgba.png"):
        assert records[name]["label"] == "anomalous", name
        assert_region_at(records[name], *spot, tolerance=3)
    rotated = records["rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (64, 96)
    # Stored (x, y) shows at (63 - y, x): the spot at x 4-20, y 30-50 is displayed at x 14-34, y 4-20.
    assert_region_at(rotated, 14, 4, 20, 16, tolerance=3)
    for suffix in (".bmp", ".tif", ".webp"):
        assert records[f"format{suffix}"]["label"] == "anomalous"
    large = records["large photo ünïcødé 名前.png"]
    assert (large["width"], large["height"]) == (5000, 3000) and large["label"] == "anomalous"
    assert (tmp_path / "out" / large["overlay"]).is_file()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["unreadable"] == 4 and summary["scored"] == len(records) - 4


def test_heatmap_and_regions_line_up_with_the_defect_on_a_large_non_square_photo(tmp_path):
    # A non-square model input on a photo of another aspect ratio: any crop or letterbox would shift the
    # defect by hundreds of pixels; the whole-image resize keeps it in place to within a map cell.
    model = build_deviation_model(tmp_path / "wide.onnx", input_size=(48, 64))
    photos = tmp_path / "photos"
    photos.mkdir()
    defect = (4700, 300, 500, 400)  # x, y, width, height: near the right edge of a 6000 x 2400 photo
    write_png(photos / "panel.png", part(2400, 6000, spot=defect))

    result = inspect(photos, "--model", model, "--out", tmp_path / "out", "-q")

    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "report.jsonl").read_text().splitlines()[0])
    cell = max(6000 / 64, 2400 / 48)  # one anomaly-map cell, in photo pixels
    assert len(record["regions"]) == 1
    assert_region_at(record, *defect, tolerance=cell / 2)
    assert record["regions"][0]["area"] == pytest.approx(500 * 400, rel=0.25)
    overlay = cv2.imread(str(tmp_path / "out" / record["overlay"]))
    assert overlay.shape[:2] == (2400, 6000)
    inside = overlay[500, 4950].astype(int)  # a white part pixel tinted by the heatmap
    far_away = overlay[2000, 1000].astype(int)
    assert np.abs(inside - 255).max() > 40
    assert np.abs(far_away - BACKGROUND).max() <= 3  # JPEG noise only: no heat where there is no defect


def test_missing_folder_and_folder_without_images_are_clear_errors(tmp_path, model):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("no pictures here")
    empty = inspect(tmp_path / "docs", "--model", model, "--out", tmp_path / "out")
    assert empty.exit_code == 2 and "no image files" in empty.stderr and "--recursive" in empty.stderr
    missing = inspect(tmp_path / "nowhere", "--model", model)
    assert missing.exit_code == 2


def test_bench_reports_model_only_and_end_to_end_throughput_and_their_ratio(tmp_path, model):
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--model",
            str(model),
            "--count",
            "8",
            "--repeats",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "model only (onnxruntime)" in result.stdout and "ratio" in result.stdout
    as_json = CliRunner().invoke(
        cli, ["bench", "--model", str(model), "--count", "8", "--repeats", "1", "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    measured = json.loads(as_json.stdout)  # --json prints the whole result, every repeat, and nothing else
    assert measured["images"] == 8 and measured["model_only_median"] > 0 and measured["end_to_end_median"] > 0
    assert measured["ratio"] == pytest.approx(
        measured["end_to_end_median"] / measured["model_only_median"], abs=1e-3
    )
    if measured["workers"] > 1:  # the one-call-at-a-time reference is measured on multi-core machines
        assert measured["threads_per_call"] == 1 and measured["single_call_median"] > 0
        assert measured["single_call_ratio"] == pytest.approx(
            measured["end_to_end_median"] / measured["single_call_median"], abs=1e-3
        )
        assert "onnxruntime defaults" in result.stdout


def test_decoder_warnings_stay_off_the_terminal_when_the_report_has_the_reason(tmp_path, model):
    # OpenCV prints its own warnings to the process's stderr (not Python's), so run the real command.
    photos = tmp_path / "photos"
    photos.mkdir()
    _, png = cv2.imencode(".png", part(64, 96))
    (photos / "truncated.png").write_bytes(png.tobytes()[: len(png) // 2])
    command = [sys.executable, "-c", "from inspector.cli import main; main()", "inspect", str(photos)]
    result = subprocess.run(
        [*command, "--model", str(model), "--out", str(tmp_path / "out"), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    records, _ = rows_by_path(tmp_path / "out")
    assert "not a decodable image" in records["truncated.png"]["error"]
    assert "WARN" not in result.stderr, result.stderr


def test_the_next_batch_is_decoded_while_the_model_runs_and_records_keep_file_order(tmp_path, model):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(6):
        write_png(photos / f"part_{index}.png", part(64, 96))

    class WatchedScorer(Scorer):
        """The first model call waits until the second batch has been prepared (or 10 s pass)."""

        def __init__(self, session):
            super().__init__(session)
            self.prepared = 0
            self.second_batch_ready = threading.Event()
            self.overlapped = None

        def prepare(self, images):
            batch = super().prepare(images)
            self.prepared += 1
            if self.prepared == 2:
                self.second_batch_ready.set()
            return batch

        def infer(self, batch):
            if self.overlapped is None:
                self.overlapped = self.second_batch_ready.wait(timeout=10)
            return super().infer(batch)

    scorer = WatchedScorer(load_model(model))
    summary = inspect_folder(photos, scorer, tmp_path / "out", batch_size=1, workers=1, save="none")

    assert scorer.overlapped, "with one model call at a time, the next image was decoded only after it"
    assert summary["scored"] == 6
    records, _ = rows_by_path(tmp_path / "out")
    assert list(records) == [f"part_{index}.png" for index in range(6)]
