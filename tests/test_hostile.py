"""The hostile corpus: files and situations a line operator or an attacker brings, each tried as a user would
(the command line, small generated files) with what they must see: the exit code, one line of error, and
what is on disk. Run it alone with ``pytest -q tests/test_hostile.py``; the README's "Reliability" table
lists what it tries.

Tests that need a full disk or a read-only folder run the command in a new user and mount namespace
(``unshare -rm``) with a tiny tmpfs or a read-only bind mount; they are skipped where the kernel allows none.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from runtime_images import (
    BACKGROUND,
    part,
    write_cmyk_tiff,
    write_exif_rotated_jpeg,
    write_gray_alpha_png,
    write_palette_png,
    write_png,
    write_png_bomb,
)
from runtime_models import build_deviation_model, contract_metadata

from inspector.cli import cli
from inspector.config import load_config
from inspector.errors import InspectorError
from inspector.io import FolderLock, atomic_write, atomic_write_bytes, atomic_write_text
from inspector.runtime.folder import inspect_folder
from inspector.runtime.report import Report, read_records
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model
from inspector.runtime.sources import Source
from inspector.runtime.watch import DEFAULT_RECORD_FPS, measured_fps, recording_fps, watch

REPO = Path(__file__).resolve().parents[1]
INSPECTOR = [sys.executable, "-m", "inspector"]
SPOT = (40, 10, 16, 20)  # x, y, width, height of the defect painted on anomalous parts


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_deviation_model(tmp_path_factory.mktemp("model") / "model.onnx", input_size=(32, 32))


def run(*args):
    """The command line, in this process."""
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def run_process(*args, timeout=120, **kwargs):
    """The command line in its own process (for what only a process shows: its stderr, signals, FIFOs).

    The timeout only stops a hung test; nothing here is timed.
    """
    return subprocess.run(
        [*INSPECTOR, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False,
        **kwargs,
    )  # fmt: skip


def assert_one_line_error(result, *fragments, code=2):
    """Exit ``code``, and stderr is one ``error:`` line holding every fragment (no traceback)."""
    exit_code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    stderr = result.stderr.strip()
    assert exit_code == code, (exit_code, stderr, getattr(result, "exception", None))
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


def records_of(out):
    """The report's records by path; checks that CSV and JSONL hold the same images, each once."""
    records = read_records(out / "report.jsonl")
    csv_lines = (out / "report.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv_lines) == len(records) + 1, "CSV has a header and one row per image"
    paths = [record["path"] for record in records]
    assert len(paths) == len(set(paths)), "every image exactly once"
    return {record["path"]: record for record in records}


def unreadable(records):
    return {path: record["error"] for path, record in records.items() if record["status"] == "unreadable"}


def good_parts(folder, count, anomalous_every=0):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        spot = SPOT if anomalous_every and index % anomalous_every == 0 else None
        write_png(folder / f"part_{index:02d}.png", part(64, 96, spot))
    return folder


def leftovers(folder):
    """Temporary or lock files anywhere under ``folder``."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == ".inspector.lock")


# --- 2. decompression bombs ---------------------------------------------------------------------------


def test_decompression_bombs_are_reported_unreadable_from_their_header_and_the_run_goes_on(tmp_path, model):
    photos = good_parts(tmp_path / "photos", 3, anomalous_every=2)
    write_png_bomb(photos / "bomb_header.png", 60000, 60000)  # 68 bytes claiming 3.6 gigapixels
    write_png_bomb(photos / "bomb_valid.png", 12000, 12000, valid=True)  # a real 1-bit image, 18 KB
    assert (photos / "bomb_header.png").stat().st_size < 100

    result = run("inspect", photos, "--model", model, "--out", tmp_path / "out", "-q")

    assert result.exit_code == 0, result.output
    records = records_of(tmp_path / "out")
    assert set(unreadable(records)) == {"bomb_header.png", "bomb_valid.png"}
    assert "60000x60000" in records["bomb_header.png"]["error"]
    assert "exceeds the limit of 100" in records["bomb_valid.png"]["error"]
    assert [records[f"part_0{i}.png"]["label"] for i in range(3)] == ["anomalous", "normal", "anomalous"]


def test_the_pixel_limit_is_an_option_and_no_decoder_error_stops_the_run(tmp_path, model):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(photos / "small.png", part(64, 64))  # 0.004 megapixels
    write_png(photos / "larger.png", part(96, 128))  # 0.012 megapixels
    write_png_bomb(photos / "bomb.png", 60000, 60000)

    strict = run("inspect", photos, "--model", model, "--out", tmp_path / "strict", "--max-megapixels", 0.01)
    assert strict.exit_code == 0, strict.output
    records = records_of(tmp_path / "strict")
    assert set(unreadable(records)) == {"larger.png", "bomb.png"}
    assert "limit of 0.01" in records["larger.png"]["error"]

    # With the limit lifted past OpenCV's own, the decoder refuses the bomb: still one row, and on it goes.
    lenient = run("inspect", photos, "--model", model, "--out", tmp_path / "lenient", "--max-megapixels", 1e5)
    assert lenient.exit_code == 0, lenient.output
    records = records_of(tmp_path / "lenient")
    assert (
        set(unreadable(records)) == {"bomb.png"} and "not a decodable image" in records["bomb.png"]["error"]
    )


def test_watch_of_a_folder_skips_bombs_fifos_and_broken_files_and_scores_the_rest(tmp_path, model):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        write_png(frames / f"frame_{index}.png", part(40, 50))
    write_png_bomb(frames / "frame_1a.png", 60000, 60000)
    (frames / "frame_1b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    os.mkfifo(frames / "frame_1c.png")

    result = run_process(
        "watch",
        "--model",
        model,
        "--source",
        frames,
        "--headless",
        "--events",
        "all",
        "--out",
        tmp_path / "out",
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames_scored"] == 3 and summary["ended_by"] == "end of source"
    assert result.stderr.count("skipped") == 3, result.stderr


# --- 3. model files whose contract is broken ----------------------------------------------------------


def metadata_with(**changes):
    values = json.loads(contract_metadata((32, 32), 3).to_json())
    values.update(changes)
    return json.dumps(values)  # NaN stays NaN, as a careless writer would leave it


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"input_size": "32x32"}, "input_size"),
        ({"input_size": [-32, 32]}, "input_size"),
        ({"input_size": [1_000_000, 32]}, "input_size"),
        ({"channels": 4}, "channels"),
        ({"image_threshold": "0.25"}, "image_threshold"),
        ({"pixel_threshold": math.nan}, "pixel_threshold"),
        ({"image_threshold": math.inf}, "image_threshold"),
        ({"calibration": ["quantile"]}, "calibration"),
        ({"normalization": {"image": [0.5, 0.0], "pixel": [0.0, 0.5]}}, "normalization"),
        ({"normalization": {"image": ["low", "high"], "pixel": [0.0, 0.5]}}, "normalization"),
        ({"trained_on": "tests"}, "trained_on"),
    ],
)
def test_model_metadata_is_checked_field_by_field(tmp_path, changes, field):
    model = build_deviation_model(tmp_path / "model.onnx", metadata=metadata_with(**changes))
    good_parts(tmp_path / "photos", 1)

    inspected = run("inspect", tmp_path / "photos", "--model", model, "--out", tmp_path / "out")
    assert_one_line_error(inspected, f"metadata field '{field}'", "re-export")
    assert not (tmp_path / "out").exists()
    assert_one_line_error(run("info", model), f"metadata field '{field}'")


def test_a_graph_whose_input_differs_from_its_metadata_is_refused_at_load(tmp_path):
    model = build_deviation_model(
        tmp_path / "model.onnx", input_size=(32, 32), metadata=contract_metadata((48, 64), 3)
    )
    good_parts(tmp_path / "photos", 1)
    result = run("inspect", tmp_path / "photos", "--model", model, "--out", tmp_path / "out")
    assert_one_line_error(result, "input 'image' is [?, 3, 32, 32]", "metadata says [N, 3, 48, 64]")
    assert_one_line_error(run("info", model), "metadata says [N, 3, 48, 64]")


# --- 4. file-system errors ----------------------------------------------------------------------------


def test_an_output_path_under_a_file_is_one_line_naming_it(tmp_path, model):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    photos = good_parts(tmp_path / "photos", 2)
    (tmp_path / "run").mkdir()

    assert_one_line_error(
        run("inspect", photos, "--model", model, "--out", blocker / "sub"), str(blocker / "sub"), "is a file"
    )
    assert_one_line_error(
        run("watch", "--model", model, "--source", photos, "--headless", "--out", blocker / "sub"),
        str(blocker / "sub"),
    )
    recorded = run(
        "watch", "--model", model, "--source", photos, "--headless", "--out", tmp_path / "w",
        "--record", blocker / "x.mp4",
    )  # fmt: skip
    assert_one_line_error(recorded, str(blocker / "x.mp4"), "is a file, not a folder")
    assert not (tmp_path / "w" / "events.jsonl").exists(), "refused before the first frame"
    assert_one_line_error(run("train", "--out", blocker / "sub"), str(blocker), "is a file")
    assert_one_line_error(
        run("export", tmp_path / "run", "--out", blocker / "sub"), str(blocker), "is a file"
    )
    assert blocker.read_text() == "a file where a folder should be"


@pytest.fixture(scope="module")
def namespaces():
    """Whether this kernel lets us mount a tmpfs in a new user and mount namespace."""
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        pytest.skip("needs Linux unshare")
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', "/tmp"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here ({probe.stderr.decode().strip()})")


def in_namespace(setup, *command, env=None):
    """Run ``command`` after the shell ``setup`` (mounts) as root of a new user and mount namespace; then
    the shell ``$AFTER`` (to keep files from a tmpfs that ends with the namespace). Exit 99: setup failed."""
    script = f'{setup} || exit 99; "$@"; status=$?; eval "${{AFTER:-true}}"; exit $status'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *map(str, command)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_a_full_disk_stops_inspect_with_one_line_keeping_the_report_and_resume_finishes(
    tmp_path, model, namespaces
):
    photos = good_parts(tmp_path / "photos", 40, anomalous_every=4)
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    result = in_namespace(
        'mount -t tmpfs -o size=64k tmpfs "$DISK"',
        *INSPECTOR, "inspect", photos, "--model", model, "--out", disk / "out", "-q", "--workers", "1",
        env={"DISK": str(disk), "AFTER": f'cp -a "{disk}/out" "{kept}"'},
    )  # fmt: skip

    assert_one_line_error(result, "No space left on device", "--resume")
    assert leftovers(kept) == [], "no temporary files and no lock left behind"
    # How many records precede the full disk depends on which write meets it first (an overlay, or the
    # JSONL's first page); what holds is that both report files agree (records_of) on fewer than all.
    before = records_of(kept)
    assert len(before) < 40
    assert all(record["status"] == "ok" for record in before.values())

    resumed = run("inspect", photos, "--model", model, "--out", kept, "--resume", "-q")
    assert resumed.exit_code == 0, resumed.output
    after = records_of(kept)
    assert sorted(after) == [f"part_{i:02d}.png" for i in range(40)]
    assert {path: after[path] for path in before} == before, "what was reported before is kept as it was"
    assert json.loads((kept / "summary.json").read_text())["anomalous"] == 10


@pytest.mark.parametrize("refusing", ["_csv", "_jsonl"])
def test_a_record_the_disk_refuses_is_in_neither_report_file(tmp_path, refusing):
    # A handle that cannot write stands in for a full disk; whichever file refuses, a line the other one
    # took for the same record is cut off again.
    report = Report(tmp_path)
    report.write({"path": "a.png", "status": "ok"})
    getattr(report, refusing).close()
    setattr(report, refusing, open(getattr(report, f"{refusing[1:]}_path"), "rb", buffering=0))  # noqa: SIM115
    with pytest.raises(OSError):
        report.write({"path": "b.png", "status": "ok"})
    assert report.close() is None
    records = records_of(tmp_path)
    assert list(records) == ["a.png"]


def test_a_full_disk_stops_train_and_export_with_one_line_and_no_temporary_files(tmp_path, namespaces):
    import yaml

    from inspector.training.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "data", categories=["fabric"], image_size=32, train_count=10, test_good=2)
    (tmp_path / "textures").mkdir()
    write_png(
        tmp_path / "textures" / "noise.png", np.random.default_rng(0).integers(0, 256, (24, 24, 3), np.uint8)
    )
    config = tmp_path / "tiny.yaml"
    tiny = {"reconstruction_width": 4, "segmentation_width": 4, "discriminator_width": 4}
    config.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "detector": "rdna",
                "detector_options": tiny,
                "input_size": [32, 32],
                "data": {
                    "format": "synthetic",
                    "root": str(tmp_path / "data"),
                    "category": "fabric",
                    "anomaly_source": str(tmp_path / "textures"),
                    "workers": 0,
                },
                "max_steps": 2,
                "batch_size": 4,
                "device": "cpu",
            }
        )
    )
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    tiny_disk = {"DISK": str(disk), "AFTER": f'cp -a "{disk}/." "{kept}"'}
    mount = 'mount -t tmpfs -o size=16k tmpfs "$DISK"'
    train = [*INSPECTOR, "train", "--config", config, "--out", disk / "runs", "--no-eval", "--no-progress"]

    trained = in_namespace(mount, *train, env=tiny_disk)

    assert trained.returncode == 2 and "Traceback" not in trained.stderr, trained.stderr
    error = trained.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "No space left on device" in error and str(disk) in error
    assert leftovers(kept) == []

    run_dir = tmp_path / "runs" / "tiny"
    assert (
        run("train", "--config", config, "--out", tmp_path / "runs", "--no-eval", "--no-progress").exit_code
        == 0
    )
    export = [*INSPECTOR, "export", run_dir, "--out", disk / "export", "--allow-uncalibrated"]
    exported = in_namespace(mount, *export, env={**tiny_disk, "AFTER": f'cp -a "{disk}/." "{kept}/export"'})
    assert exported.returncode == 2 and "Traceback" not in exported.stderr, exported.stderr
    error = exported.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "No space left on device" in error and str(disk) in error
    assert leftovers(kept) == [] and not list((kept / "export").rglob("model.onnx"))


def test_a_read_only_output_folder_is_one_line_for_every_command_and_nothing_changes(
    tmp_path, model, namespaces
):
    photos = good_parts(tmp_path / "photos", 3)
    locked = tmp_path / "readonly"
    first = run("inspect", photos, "--model", model, "--out", locked / "out", "-q")
    assert first.exit_code == 0
    (locked / "run").mkdir()
    before = {p: p.read_bytes() for p in locked.rglob("*") if p.is_file()}
    read_only = f'mount --bind "{locked}" "{locked}" && mount -o remount,bind,ro "{locked}"'

    commands = {
        "inspect --resume": ["inspect", photos, "--model", model, "--out", locked / "out", "--resume"],
        "inspect new": ["inspect", photos, "--model", model, "--out", locked / "new"],
        "watch": ["watch", "--model", model, "--source", photos, "--headless", "--out", locked / "w"],
        "train": ["train", "--out", locked / "runs"],
        "export": ["export", locked / "run"],
    }
    for name, command in commands.items():
        result = in_namespace(read_only, *INSPECTOR, *command)
        assert_one_line_error(result, str(locked))
        assert "read-only file system" in result.stderr.lower(), (name, result.stderr)
    assert {p: p.read_bytes() for p in locked.rglob("*") if p.is_file()} == before


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("previous")

    def full_disk(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, full_disk)
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# --- 5. file names that are not UTF-8 -------------------------------------------------------------------


def test_file_names_with_non_utf8_bytes_or_control_characters_are_scored_and_reported_escaped(
    tmp_path, model
):
    photos = tmp_path / "photos"
    photos.mkdir()
    latin1 = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    write_png(photos / latin1, part(64, 96, SPOT))
    write_png(photos / "line\nbreak.png", part(64, 96))
    write_png(photos / "plain.png", part(64, 96))

    result = run("inspect", photos, "--model", model, "--out", tmp_path / "out", "-q")

    assert result.exit_code == 0, result.output
    records = records_of(tmp_path / "out")
    assert sorted(records) == ["caf\\xe9.png", "line\\x0abreak.png", "plain.png"]
    assert (
        records["caf\\xe9.png"]["label"] == "anomalous" and records["line\\x0abreak.png"]["label"] == "normal"
    )
    assert (tmp_path / "out" / records["caf\\xe9.png"]["overlay"]).is_file()
    (tmp_path / "out" / "report.csv").read_bytes().decode("utf-8")  # the whole report is valid UTF-8
    again = run("inspect", photos, "--model", model, "--out", tmp_path / "out", "--resume", "-q")
    assert again.exit_code == 0 and len(records_of(tmp_path / "out")) == 3, "resume recognises them"


# --- 6. one run per output folder ---------------------------------------------------------------------


def test_a_second_run_into_the_same_output_folder_is_refused_while_the_first_runs(tmp_path, model):
    photos = good_parts(tmp_path / "photos", 2)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; from inspector.io import FolderLock\n"
            f"with FolderLock({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()"
        )],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"  # a first run holds the folder
        second = run("inspect", photos, "--model", model, "--out", out, "--force")
        assert_one_line_error(second, str(out), "in use by another inspector run", f"process {holder.pid}")
        assert not (out / "report.csv").exists()
        watching = run("watch", "--model", model, "--source", photos, "--headless", "--out", out)
        assert_one_line_error(watching, "in use by another inspector run")
    finally:
        holder.communicate("", timeout=60)

    assert run("inspect", photos, "--model", model, "--out", out, "-q").exit_code == 0
    assert leftovers(out) == []


def test_a_lock_file_left_by_a_killed_run_does_not_block_the_next(tmp_path, model):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".inspector.lock").write_text("99999\n")  # its process is gone, and so is its lock
    result = run("inspect", good_parts(tmp_path / "photos", 2), "--model", model, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert leftovers(out) == []


def test_temporary_names_are_unique_so_two_writers_never_share_one(tmp_path):
    target = tmp_path / "report.jsonl"

    def outer(handle):
        handle.write(b"outer")
        atomic_write_bytes(target, b"inner")  # a second writer of the same file, mid-write

    atomic_write(target, outer)
    assert target.read_bytes() == b"outer" and [p.name for p in tmp_path.iterdir()] == ["report.jsonl"]


# --- 7. run names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../escape", "/tmp/absolute", "", ".", "..", "a/b", "a\\b"])
def test_run_names_must_be_one_folder_name(tmp_path, name):
    result = run("train", "--out", tmp_path / "runs", "--name", name)
    assert_one_line_error(result, "name")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("line", ["name:", "name: ../escape", "name: /abs"])
def test_a_config_name_that_is_empty_or_a_path_is_refused(tmp_path, line):
    config = tmp_path / "config.yaml"
    config.write_text(f"{line}\nout: {tmp_path / 'runs'}\n")
    assert_one_line_error(run("train", "--config", config), f"{config}: name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# --- 8. only regular files; one Ctrl-C stops ----------------------------------------------------------


def hostile_specials(folder):
    """Image-named entries that are not images: a FIFO, a link to an endless device, a link loop, a broken
    link and a directory."""
    os.mkfifo(folder / "fifo.png")
    os.symlink("/dev/zero", folder / "zeros.png")
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    os.symlink(folder / "missing.png", folder / "broken.png")
    (folder / "directory.png").mkdir()
    return {"fifo.png", "zeros.png", "loop_a.png", "loop_b.png", "broken.png", "directory.png"}


def test_fifos_devices_link_loops_and_broken_links_are_reported_not_read(tmp_path, model):
    photos = good_parts(tmp_path / "photos", 2)
    specials = hostile_specials(photos)

    result = run_process("inspect", photos, "--model", model, "--out", tmp_path / "out", "-q")

    assert result.returncode == 0, result.stderr
    errors = unreadable(records_of(tmp_path / "out"))
    assert set(errors) == specials
    assert "FIFO" in errors["fifo.png"] and "character device" in errors["zeros.png"]
    assert "symbolic links" in errors["loop_a.png"] and "No such file" in errors["broken.png"]
    assert "directory" in errors["directory.png"]


def test_one_ctrl_c_stops_a_run_among_fifos_and_resume_finishes_it(tmp_path, model):
    photos = good_parts(tmp_path / "photos", 12)
    hostile_specials(photos)
    out = tmp_path / "out"

    def ctrl_c(_record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        inspect_folder(photos, Scorer(load_model(model)), out, batch_size=2, workers=2, on_record=ctrl_c)
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    resumed = run("inspect", photos, "--model", model, "--out", out, "--resume", "-q")
    assert resumed.exit_code == 0 and len(records_of(out)) == 18


def test_ctrl_c_stops_inspect_in_its_own_process_with_exit_130(tmp_path, model):
    photos = good_parts(tmp_path / "photos", 300)
    hostile_specials(photos)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [*INSPECTOR, "inspect", str(photos), "--model", str(model), "--out", str(out), "-q",
         "--workers", "1", "--batch-size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "report.jsonl").exists():  # the run has begun (300 tiny images take well under a second)
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # once
    _, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr and "Traceback" not in stderr


# --- 9. the output folder is never an input ----------------------------------------------------------


def test_inspecting_a_folder_into_itself_never_reads_its_own_overlays(tmp_path, model):
    photos = good_parts(tmp_path / "photos", 3, anomalous_every=2)
    for _ in range(3):
        result = run("inspect", photos, "-r", "--model", model, "--out", photos, "--force", "-q")
        assert result.exit_code == 0, result.output
        summary = json.loads((photos / "summary.json").read_text())
        assert (summary["images"], summary["anomalous"]) == (3, 2)
    fresh = good_parts(tmp_path / "fresh", 3)
    nested = run("inspect", fresh, "-r", "--model", model, "--out", fresh / "results", "-q")
    again = run("inspect", fresh, "-r", "--model", model, "--out", fresh / "results", "--force", "-q")
    assert nested.exit_code == again.exit_code == 0 and len(records_of(fresh / "results")) == 3
    refused = run("inspect", photos / "overlays", "--model", model, "--out", photos)
    assert_one_line_error(refused, "writes its overlays")


def test_a_link_into_the_output_folder_is_not_an_input_either(tmp_path, model):
    photos = good_parts(tmp_path / "photos", 2)
    out = tmp_path / "out"
    assert run("inspect", photos, "--model", model, "--out", out, "-q").exit_code == 0
    os.symlink(out / "overlays" / "part_00.jpg", photos / "link_to_overlay.jpg")
    os.symlink(out, photos / "results.png")
    result = run("inspect", photos, "-r", "--model", model, "--out", out, "--force", "-q")
    assert result.exit_code == 0
    assert sorted(records_of(out)) == ["part_00.png", "part_01.png"]


# --- 10. configs and checkpoints --------------------------------------------------------------------------


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("epochs: ten\n", "epochs must be a whole number, got 'ten'"),
        ("lr: fast\n", "lr must be a number, got 'fast'"),
        ("lr: -0.001\n", "lr must be above 0"),
        ("lr: .nan\n", "lr must be a finite number"),
        ("input_size: [64]\n", "input_size must be [height, width]"),
        ("input_size: [64, 100000]\n", "input_size must be [height, width]"),
        ("batch_size: 0\n", "batch_size must be at least 1"),
        ("seed: -1\n", "seed must be from 0"),
        ("crop_size: 4\n", "crop_size must be from 8"),
        ("crop_size: 64\ninput_size: 32\n", "crop_size must be from 8 to the input size's smaller side (32)"),
        ("checkpoint_every_seconds: 0\n", "checkpoint_every_seconds must be above 0"),
        ("checkpoint_every_steps: 0\n", "checkpoint_every_steps must be at least 1"),
        ("calibration:\n  min_region_area: -1\n", "calibration.min_region_area must be 0 or more"),
        ("calibration:\n  false_reject_rate: 2\n", "calibration.false_reject_rate must be between 0 and 1"),
        ("calibration: fast\n", "calibration must be a mapping"),
        ("data:\n  workers: many\n", "data.workers must be a whole number"),
        ("data:\n  formt: mvtec\n", "unknown key 'data.formt'"),
        ("detector_options: [1, 2]\n", "detector_options must be a mapping"),
        ("lr: !!python/object/apply:os.system [echo]\n", "not valid YAML"),
        (BILLION_LAUGHS, "expands to more than 10000 values"),
        ("a: &a [*a]\n", "expands to more than 10000 values"),
        ("x: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
        ("- just\n- a list\n", "the top level must be a mapping"),
    ],
)
def test_every_config_key_is_checked_with_one_line_naming_it(tmp_path, text, fragment):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    assert_one_line_error(run("train", "--config", config, "--out", tmp_path / "runs"), fragment)
    assert not (tmp_path / "runs").exists()


def test_numbers_yaml_reads_as_text_and_one_side_input_sizes_are_understood(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("lr: 1e-3\ninput_size: 64\nepochs: 2.0\n")  # YAML 1.1 reads 1e-3 as a string
    loaded = load_config(config)
    assert (loaded.lr, loaded.input_size, loaded.epochs) == (0.001, [64, 64], 2)


@pytest.fixture
def run_with_checkpoint(tmp_path):
    """A run folder whose best.pt the test writes."""
    import torch

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    load_config(None, {"input_size": [32, 32]}).save(run_dir / "config.yaml")

    def write(state):
        torch.save(state, run_dir / "checkpoints" / "best.pt")
        return run_dir

    return write


@pytest.mark.parametrize(
    "state, fragment",
    [
        ({"format_version": 1, "model": {}}, "lacks detector, input_size"),
        ({"format_version": 99, "model": {}}, "checkpoint format 99"),
        (["not", "a", "mapping"], "not an inspector checkpoint"),
    ],
)
def test_checkpoints_are_checked_for_version_and_structure(run_with_checkpoint, state, fragment):
    result = run("export", run_with_checkpoint(state))
    assert_one_line_error(result, fragment)


def test_a_checkpoint_with_entries_of_the_wrong_type_is_damaged_not_a_key_error(run_with_checkpoint):
    from inspector.training.checkpoint import _STRUCTURE

    state = {key: 0 for key in _STRUCTURE} | {"format_version": 1, "model": {}, "detector": "rdna"}
    assert_one_line_error(run("export", run_with_checkpoint(state)), "damaged", "input_size")


def test_a_pickled_checkpoint_is_refused_without_torchs_advice_to_trust_it(tmp_path, run_with_checkpoint):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    run_dir = run_with_checkpoint({})
    (run_dir / "checkpoints" / "best.pt").write_bytes(pickle.dumps({"model": Payload()}, protocol=2))
    result = run("export", run_dir)
    assert_one_line_error(result, "refused", "system")
    assert "weights_only" not in result.stderr and "trusted" not in result.stderr


# --- 11. permissions ----------------------------------------------------------------------------------


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def test_written_files_get_the_permissions_of_a_normal_write(tmp_path, umask, model):
    umask(0o022)
    assert (atomic_write_bytes(tmp_path / "model.onnx", b"m").stat().st_mode & 0o777) == 0o644
    umask(0o027)
    assert (atomic_write_text(tmp_path / "config.yaml", "x").stat().st_mode & 0o777) == 0o640
    replaced = tmp_path / "shared.json"
    replaced.write_text("old")
    replaced.chmod(0o664)
    assert (atomic_write_text(replaced, "new").stat().st_mode & 0o777) == 0o664, (
        "a replaced file keeps its mode"
    )
    umask(0o022)
    run("inspect", good_parts(tmp_path / "photos", 1), "--model", model, "--out", tmp_path / "out", "-q")
    for name in ("summary.json", "report.csv", "report.jsonl"):
        assert ((tmp_path / "out" / name).stat().st_mode & 0o777) == 0o644, name


# --- 12. small ones ----------------------------------------------------------------------------------------


def test_the_recording_rate_is_measured_when_the_source_says_nothing_or_something_wrong():
    ten_per_second = [(index, index / 10.0) for index in range(11)]
    assert measured_fps(ten_per_second) == pytest.approx(10.0)
    assert measured_fps([(0, 0.0), (4, 0.2), (20, 1.0)]) == pytest.approx(20.0), "dropped frames count"
    assert measured_fps([(0, 0.0)]) is None
    assert recording_fps(25.0, 10.0) == 10.0, "an MJPEG stream that claims 25"
    assert recording_fps(None, 10.0) == 10.0
    assert recording_fps(30.0, 29.2) == 30.0, "the nominal rate when it agrees"
    assert recording_fps(None, None) == DEFAULT_RECORD_FPS and recording_fps(12.0, None) == 12.0


class TenFpsCamera(Source):
    """A live source that delivers about 10 frames per second but reports 25, as FFmpeg does for MJPEG."""

    name, live, fps = "fake camera", True, 25.0

    def __init__(self, frames):
        self.left = frames

    def read(self):
        if self.left == 0:
            time.sleep(0.05)
            return None
        self.left -= 1
        time.sleep(0.1)
        return part(48, 64)


def test_a_live_recording_plays_at_the_sources_real_rate(tmp_path, model):
    stop = threading.Event()
    safety = threading.Timer(30.0, stop.set)  # only ends a hung test; nothing is timed
    safety.start()
    try:
        summary = watch(
            TenFpsCamera(frames=20),
            Scorer(load_model(model)),
            tmp_path / "out",
            headless=True,
            record=tmp_path / "line.avi",
            max_frames=15,
            stop=stop,
        )
    finally:
        safety.cancel()
    recorded = cv2.VideoCapture(str(tmp_path / "line.avi"))
    fps = recorded.get(cv2.CAP_PROP_FPS)
    recorded.release()
    assert 4.0 < summary["recording_fps"] < 12.5 and fps == pytest.approx(summary["recording_fps"], abs=0.01)


def test_an_unreachable_stream_is_one_line_without_ffmpegs_own(tmp_path, model):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    result = run_process(
        "watch", "--model", model, "--source", f"http://127.0.0.1:{port}/video.mjpg", "--headless",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert_one_line_error(result, "cannot open")


def test_info_on_a_directory_or_fifo_named_like_a_model_says_what_it_is(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    assert_one_line_error(run("info", tmp_path / "model.onnx"), "is a directory, not a model file")
    os.mkfifo(tmp_path / "pipe.onnx")
    assert_one_line_error(run("info", tmp_path / "pipe.onnx"), "is a FIFO (named pipe), not a model file")
    assert_one_line_error(run("info", tmp_path / "missing.onnx"), "model file not found")


# --- the rest of the corpus: odd images and files that change while read --------------------------------


def test_odd_images_are_scored_and_broken_ones_reported_and_nothing_is_lost(tmp_path, model):
    photos = tmp_path / "photos"
    photos.mkdir()
    gray = np.full((64, 96), BACKGROUND, np.uint8)
    gray[10:30, 40:56] = 255
    deep = (gray.astype(np.uint16) * 257).astype(np.uint16)
    write_png(photos / "deep16.png", deep)
    write_palette_png(photos / "palette.png", gray)
    write_gray_alpha_png(photos / "gray_alpha.png", gray)
    write_cmyk_tiff(photos / "cmyk.tif", part(64, 96, SPOT))
    write_exif_rotated_jpeg(photos / "rotated.jpg", part(64, 96, spot=(4, 30, 16, 20)))
    write_png(photos / "row.png", part(1, 300))
    write_png(photos / "column.png", part(300, 1))
    write_png(photos / "dot.png", part(1, 1))
    (photos / "zero.png").write_bytes(b"")
    _, png = cv2.imencode(".png", part(64, 96))
    (photos / "truncated.png").write_bytes(png.tobytes()[: len(png) // 2])
    _, jpeg = cv2.imencode(".jpg", part(64, 96))
    (photos / "header_only.jpg").write_bytes(jpeg.tobytes()[:20])
    (photos / "text.png").write_text("not a picture")

    result = run_process("inspect", photos, "--model", model, "--out", tmp_path / "out", "-q")

    assert result.returncode == 0 and result.stderr == "", result.stderr
    records = records_of(tmp_path / "out")
    assert len(records) == 12, "every listed file has its one row"
    errors = unreadable(records)
    assert set(errors) == {"zero.png", "truncated.png", "header_only.jpg", "text.png"}
    assert "empty" in errors["zero.png"] and "header truncated" in errors["header_only.jpg"]
    for name in ("deep16.png", "palette.png", "gray_alpha.png", "cmyk.tif", "rotated.jpg"):
        assert records[name]["label"] == "anomalous", name
    assert (records["rotated.jpg"]["width"], records["rotated.jpg"]["height"]) == (64, 96)
    for name in ("row.png", "column.png", "dot.png"):
        assert records[name]["label"] == "normal", name
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["images"], summary["scored"], summary["unreadable"]) == (12, 8, 4)


def test_files_that_change_between_listing_and_reading_are_reported_not_fatal(tmp_path, model):
    photos = good_parts(tmp_path / "photos", 5)

    def change_files(_count):  # called after the folder is listed, before any image is read
        (photos / "part_00.png").write_bytes(b"")
        (photos / "part_01.png").unlink()
        (photos / "part_02.png").unlink()
        os.mkfifo(photos / "part_02.png")
        data = (photos / "part_03.png").read_bytes()
        (photos / "part_03.png").write_bytes(data[: len(data) // 3])
        write_png(photos / "part_04.png", part(200, 300, SPOT))  # replaced by a larger, defective part

    summary = inspect_folder(photos, Scorer(load_model(model)), tmp_path / "out", on_total=change_files)

    records = records_of(tmp_path / "out")
    assert summary["reported"] == 5 and sorted(unreadable(records)) == [f"part_0{i}.png" for i in range(4)]
    assert "empty" in records["part_00.png"]["error"] and "No such file" in records["part_01.png"]["error"]
    assert "FIFO" in records["part_02.png"]["error"] and "decodable" in records["part_03.png"]["error"]
    assert (records["part_04.png"]["width"], records["part_04.png"]["label"]) == (300, "anomalous")


def test_the_folder_lock_refuses_a_second_holder_even_in_the_same_process(tmp_path):
    with pytest.raises(InspectorError, match="in use by another inspector run"), FolderLock(tmp_path):
        FolderLock(tmp_path).acquire()
    assert list(tmp_path.iterdir()) == [], "released and removed"
