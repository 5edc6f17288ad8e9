"""One CLI vocabulary (docs/architecture.md, section 5): each shared option has one name and one meaning,
every option has help, overlays are named after their images, exit codes are named in one place."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from runtime_images import part, write_png
from runtime_models import build_deviation_model

from inspector import exit_codes
from inspector.cli import cli
from inspector.errors import InspectorError
from inspector.runtime import session as session_module
from inspector.runtime.session import physical_cores

REPO = Path(__file__).resolve().parents[1]
PIPELINE = ["demo", "train", "eval", "export", "calibrate", "info", "inspect", "watch", "bench"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_deviation_model(tmp_path_factory.mktemp("model") / "model.onnx")


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def options_of(command_name: str) -> dict[str, click.Option]:
    command = cli.commands[command_name]
    return {name: param for param in command.params if isinstance(param, click.Option) for name in param.opts}


# --- help -------------------------------------------------------------------------------------------------


def test_top_level_help_lists_every_command_in_pipeline_order_on_one_whole_line():
    result = invoke("--help")
    assert result.exit_code == 0
    listing = result.output.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listing] == PIPELINE  # one line each: no wrapped summaries
    for line in listing:
        name, summary = line.split(maxsplit=1)
        assert not summary.endswith("..."), line
        assert summary == cli.commands[name].short_help


def test_every_visible_option_of_every_command_has_help_text():
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help and len(param.help) > 10, (name, param.opts)


def test_a_shared_option_means_the_same_in_every_command_that_has_it():
    shared = {
        "--threads": ["inspect", "watch", "bench", "calibrate", "eval"],
        "--workers": ["inspect", "bench"],
        "--save": ["inspect", "watch", "bench"],
        "--time-limit": ["train", "demo"],
        "--max-steps": ["train", "demo"],
        "--no-progress": ["train", "inspect", "calibrate", "eval", "watch"],
        "--threshold": ["inspect", "watch"],
        "--json": ["info", "bench", "eval"],
        "--strict-device": ["inspect", "watch", "bench", "calibrate", "eval"],
        "--batch-size": ["inspect", "bench", "calibrate"],
    }
    for option, commands in shared.items():
        found = [options_of(name).get(option) for name in commands]
        assert all(found), (option, commands)
        assert len({param.type.name for param in found}) == 1, option
        if option == "--save":
            assert {tuple(param.type.choices) for param in found} == {("all", "anomalous", "none")}
            assert all("OUT/overlays/" in param.help for param in found[:2])
        elif option != "--json":
            assert len({param.help for param in found}) == 1, option
    assert all("--workers" not in options_of(name) for name in ("train", "demo", "watch"))
    assert "--loader-workers" in options_of("train") and "--minutes" not in invoke("demo", "--help").output
    assert options_of("inspect")["-q"] is options_of("inspect")["--no-progress"]


def test_train_workers_is_now_loader_workers_and_click_points_there():
    result = invoke("train", "--workers", "2")
    assert result.exit_code == exit_codes.EXIT_USAGE
    assert "Did you mean '--loader-workers'?" in result.output


# --- --threads 0 and --save: one meaning ------------------------------------------------------------------


def test_threads_zero_gives_one_model_call_every_core_in_inspect_and_watch(tmp_path, model, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(photos / "part.png", part(20, 20))
    asked = {}

    def record_threads(path, device, strict, threads, warn=None):
        asked[len(asked)] = threads
        raise InspectorError("stop here")

    monkeypatch.setattr(session_module, "load_model", record_threads)
    invoke("inspect", photos, "--model", model, "--workers", "1", "--threads", "0")
    invoke("watch", "--model", model, "--source", photos, "--headless", "--threads", "0")
    invoke("inspect", photos, "--model", model, "--workers", "1", "--threads", "3")
    invoke("watch", "--model", model, "--source", photos, "--headless", "--threads", "3")
    assert asked == {0: physical_cores(), 1: physical_cores(), 2: 3, 3: 3}


def test_save_has_the_same_choices_and_folder_in_inspect_and_watch(tmp_path, model):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        write_png(frames / f"f{index}.png", part(30, 40, spot=(3, 3, 9, 9) if index == 1 else None))

    inspected = invoke(
        "inspect", frames, "--model", model, "--out", tmp_path / "inspect", "--save", "all", "-q"
    )
    watched = invoke(
        "watch",
        "--model",
        model,
        "--source",
        frames,
        "--headless",
        "--out",
        tmp_path / "watch",
        "--save",
        "all",
    )

    assert inspected.exit_code == watched.exit_code == 0, (inspected.output, watched.output)
    assert sorted(p.name for p in (tmp_path / "inspect" / "overlays").iterdir()) == [
        "f0.jpg",
        "f1.jpg",
        "f2.jpg",
    ]
    watch_overlays = sorted(p.name for p in (tmp_path / "watch" / "overlays").iterdir())
    assert watch_overlays == ["frame_0000000.jpg", "frame_0000001.jpg", "frame_0000002.jpg"]
    assert not (tmp_path / "watch" / "anomalies").exists()
    assert f"overlays: {tmp_path / 'watch' / 'overlays'}" in watched.output

    # A second watch into the same folder keeps the first run's overlays, which its events point to.
    again = invoke("watch", "--model", model, "--source", frames, "--headless", "--out", tmp_path / "watch")
    assert again.exit_code == 0, again.output
    events = [json.loads(line) for line in (tmp_path / "watch" / "events.jsonl").read_text().splitlines()]
    assert [event["overlay"] for event in events] == [
        "overlays/frame_0000001.jpg",
        "overlays/frame_0000001-2.jpg",
    ]
    assert all((tmp_path / "watch" / event["overlay"]).is_file() for event in events)


def test_watch_events_and_inspect_reports_are_one_record(tmp_path, model):
    frames = tmp_path / "frames"
    frames.mkdir()
    write_png(frames / "bad.png", part(30, 40, spot=(3, 3, 9, 9)))
    assert invoke("inspect", frames, "--model", model, "--out", tmp_path / "i", "-q").exit_code == 0
    assert (
        invoke("watch", "--model", model, "--source", frames, "--headless", "--out", tmp_path / "w").exit_code
        == 0
    )
    reported = json.loads((tmp_path / "i" / "report.jsonl").read_text())
    event = json.loads((tmp_path / "w" / "events.jsonl").read_text())
    shared = ("path", "status", "label", "score", "raw_score", "width", "height", "regions", "mask", "error")
    assert {key: event[key] for key in shared} == {key: reported[key] for key in shared}
    assert {"time", "source", "frame", "latency_ms"} <= set(event) and "time_ms" in reported


# --- overlay names ----------------------------------------------------------------------------------------


def test_overlays_and_masks_are_named_after_the_image_with_a_suffix_only_on_a_clash(tmp_path, model):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("part.png", "part.tif", "sub/part.png", "part-2.png", "x.jpg"):
        write_png(photos / name, part(24, 24))

    result = invoke("inspect", photos, "-r", "--masks", "--model", model, "--out", tmp_path / "out", "-q")

    assert result.exit_code == 0, result.output
    records = {
        r["path"]: r for r in map(json.loads, (tmp_path / "out" / "report.jsonl").read_text().splitlines())
    }
    overlays = {path: record["overlay"] for path, record in records.items()}
    assert overlays == {
        "part-2.png": "overlays/part-2.jpg",
        "part.png": "overlays/part.jpg",
        "part.tif": "overlays/part-3.jpg",  # part-2 is another image's name
        "sub/part.png": "overlays/sub/part.jpg",
        "x.jpg": "overlays/x.jpg",
    }
    assert all(records[path]["mask"] == f"masks/{overlay[9:-4]}.png" for path, overlay in overlays.items())
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.*"))
    assert [p for p in written if p.startswith("overlays/")] == sorted(overlays.values())


# --- info, export, demo, train ----------------------------------------------------------------------------


def test_info_prints_its_table_and_the_json_dump_only_with_json(model):
    table = invoke("info", model)
    assert table.exit_code == 0, table.output
    assert "detector" in table.output and "thresholds" in table.output and "--json" in table.output
    assert '"schema":' not in table.output and len(table.output.splitlines()) < 25
    as_json = invoke("info", model, "--json")
    assert json.loads(as_json.output)["metadata"]["detector"] == "mean-abs-deviation"


def test_export_onnx_is_documented_as_the_default_format():
    help_text = " ".join(invoke("export", "--help").output.split())
    assert "--onnx Export to ONNX: the only format and the default" in help_text
    assert invoke("export", "/nowhere/run", "--onnx").exit_code == invoke("export", "/nowhere/run").exit_code


def test_demo_takes_train_s_time_limit_still_accepts_minutes_and_has_no_limit_by_default(
    tmp_path, monkeypatch
):
    pytest.importorskip("torch")
    from inspector.training import trainer

    limits = []

    class Stop(Exception):
        pass

    def capture(config, **_):
        limits.append(config.time_limit_minutes)
        raise Stop

    monkeypatch.setattr(trainer, "train", capture)
    for option in (["--time-limit", "1.5"], ["--minutes", "1.5"], []):
        result = invoke("demo", *option, "--data", tmp_path / "data", "--out", tmp_path / "runs")
        assert isinstance(result.exception, Stop), result.output
    # Without a limit the demo's steps bind (the CPU preset's own 10 minutes would cut it on a busy machine).
    assert limits == [1.5, 1.5, None]


def test_train_folder_options_set_the_folder_keys_without_a_yaml_file(tmp_path):
    pytest.importorskip("torch")
    good, defects, masks = tmp_path / "good", tmp_path / "defects", tmp_path / "masks"
    for folder in (good, defects, masks):
        folder.mkdir()
    for index in range(6):
        write_png(good / f"g{index}.png", part(32, 32))
    write_png(defects / "d0.png", part(32, 32, spot=(4, 4, 8, 8)))
    mask = part(32, 32)[:, :, 0] * 0
    mask[4:12, 4:12] = 255
    write_png(masks / "d0.png", mask)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "detector": "draem",
                "detector_options": {"reconstruction_width": 4, "segmentation_width": 4},
                "input_size": [32, 32],
                "data": {"format": "synthetic", "workers": 0},
                "batch_size": 2,
                "device": "cpu",
            }
        )
    )

    missing = invoke(
        "train", "--config", config, "--normal-dir", tmp_path / "nowhere", "--out", tmp_path / "r"
    )
    assert missing.exit_code == exit_codes.EXIT_USAGE and "(data.normal_dir) not found" in missing.output
    wrong = invoke("train", "--format", "mvtec", "--normal-dir", good)
    assert wrong.exit_code == exit_codes.EXIT_USAGE
    assert "--normal-dir name the folders of --format folder" in wrong.output

    result = invoke(
        "train", "--config", config, "--normal-dir", good, "--abnormal-dir", defects, "--mask-dir", masks,
        "--loader-workers", "0", "--max-steps", "1", "--no-eval", "--no-progress", "--out", tmp_path / "runs",
        "--name", "folder",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    data = yaml.safe_load((tmp_path / "runs" / "folder" / "config.yaml").read_text())["data"]
    assert data["format"] == "folder" and data["workers"] == 0
    assert (data["normal_dir"], data["abnormal_dir"], data["mask_dir"]) == (
        str(good),
        str(defects),
        str(masks),
    )
    assert "next: inspector eval" in result.output


# --- exit codes -------------------------------------------------------------------------------------------


def test_exit_codes_are_named_in_one_place_and_no_command_uses_a_literal():
    literal = re.compile(r"(SystemExit|\.exit)\(\s*\d|\b128 \+")
    for path in [REPO / "inspector" / "cli.py", *(REPO / "inspector" / "commands").glob("*.py")]:
        offending = [line for line in path.read_text().splitlines() if literal.search(line)]
        assert not offending, (path.name, offending)
    from inspector import cli as cli_module

    assert cli_module.EXIT_USAGE is exit_codes.EXIT_USAGE == 2
    assert (exit_codes.EXIT_INTERRUPTED, exit_codes.EXIT_TERMINATED) == (130, 143)


# --- onnxruntime variants ---------------------------------------------------------------------------------


def fake_distribution(site: Path, name: str, version: str = "1.99.0") -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def run_inspector(*args, site: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "inspector", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_two_onnxruntime_distributions_give_one_warning_naming_the_winner_and_the_fix(tmp_path, model):
    site = tmp_path / "site"
    fake_distribution(site, "onnxruntime-gpu")
    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(photos / "part.png", part(20, 20))

    clean = run_inspector("info", model)
    clashing = run_inspector("info", model, site=site)
    inspected = run_inspector("inspect", photos, "--model", model, "--out", tmp_path / "out", "-q", site=site)

    assert clean.returncode == 0 and "warning" not in clean.stderr, clean.stderr
    for result in (clashing, inspected):
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1, result.stderr
        assert "onnxruntime and onnxruntime-gpu are both installed" in warnings[0]
        assert "onnxruntime's won" in warnings[0]  # the real build here is the CPU one
        assert warnings[0].endswith(
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )


def test_directml_is_a_device_with_its_package_named_when_missing():
    assert "directml" in options_of("inspect")["--device"].type.choices
    providers, warning = session_module.choose_providers("directml", [session_module.CPU])
    assert providers == [session_module.CPU] and "onnxruntime-directml" in warning
    dml = "DmlExecutionProvider"
    assert session_module.choose_providers("auto", [dml, session_module.CPU])[0] == [dml, session_module.CPU]


def test_no_onnxruntime_at_all_is_one_line_naming_the_builds(tmp_path, model):
    code = (
        "import sys; sys.modules['onnxruntime'] = None; from inspector.cli import main; "
        f"sys.argv = ['inspector', 'info', {str(model)!r}]; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == exit_codes.EXIT_USAGE, result.stderr
    expected = (
        "error: no onnxruntime is installed; install exactly one build: pip install onnxruntime "
        "(or onnxruntime-gpu, onnxruntime-openvino, onnxruntime-directml)"
    )
    assert result.stderr.strip().splitlines() == [expected]
