"""`inspector calibrate MODEL.onnx`: on-site recalibration without torch, the model rewritten with its history.

The model is the deviation model of runtime_models.py: a pixel's raw map value is |value / 255 - 0.5| (mean
over channels), an image's raw score its map's maximum. So every threshold below is computed by hand from
the pixel values painted into the images.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from runtime_images import part, write_png
from runtime_models import RAW_THRESHOLD, build_deviation_model, contract_metadata

from inspector.artifact import METADATA_KEY, ModelMetadata
from inspector.cli import cli
from inspector.onnx_metadata import NotAnOnnxModelError, read_metadata_props, replace_metadata_prop

GOOD_VALUES = [130 + 5 * index for index in range(19)]  # spot brightness of the 19 good images: 130 ... 220


def raw(value: int) -> float:
    """The raw map value of a gray pixel, computed as the graph does (float32)."""
    return float(abs(np.float32(value) / np.float32(255.0) - np.float32(0.5)))


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def metadata_of(path: Path) -> dict:
    return json.loads(read_metadata_props(path.read_bytes())[METADATA_KEY])


@pytest.fixture
def station(tmp_path):
    """A model and a new station's folders: 19 good parts with a faint 2x2 spot each, 3 defective parts
    with a white 8x8 spot, and the defective parts' masks."""
    model = build_deviation_model(tmp_path / "model.onnx")
    good, defective, masks = tmp_path / "good", tmp_path / "defective", tmp_path / "masks"
    for folder in (good, defective, masks):
        folder.mkdir()
    for index, value in enumerate(GOOD_VALUES):
        image = part(32, 32)
        image[10:12, 10:12] = value
        write_png(good / f"g{index:02d}.png", image)
    for index in range(3):
        write_png(defective / f"d{index}.png", part(32, 32, spot=(4 + index, 8, 8, 8)))
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 4 + index : 12 + index] = 255
        write_png(masks / f"d{index}_mask.png", mask)
    return model, good, defective, masks


def test_quantile_recalibration_sets_the_thresholds_computed_by_hand_and_keeps_the_history(station):
    model, good, _, _ = station
    graph_before = onnx.load(str(model)).graph.SerializeToString()

    result = invoke("calibrate", model, "--good", good, "--false-reject-rate", "0.1", "-q")

    assert result.exit_code == 0, result.output
    # 19 good scores, rate 0.1: the k-th smallest with k = ceil((19 + 1) * 0.9) = 18, i.e. spot value 215.
    # Pixels: 19 x 1024, 76 of them spot pixels (4 per image) above the 19380 background pixels; rate 0.001
    # gives rank ceil(19457 * 0.999) = 19438, the 58th spot pixel: image 14's, spot value 200.
    meta = metadata_of(model)
    assert meta["image_threshold"] == pytest.approx(raw(215), abs=1e-7)
    assert meta["pixel_threshold"] == pytest.approx(raw(200), abs=1e-7)
    assert meta["normalization"]["image"] == pytest.approx([raw(130), raw(220)], abs=1e-7)
    assert meta["normalization"]["pixel"] == pytest.approx([raw(128), raw(220)], abs=1e-7)
    calibration = meta["calibration"]
    assert (calibration["method"], calibration["target"]) == ("quantile", 0.1)
    assert calibration["data"]["normal"] == 19 and calibration["data"]["promised_false_reject_rate"] == 0.1
    # The export's calibration is the first (and only) entry of the history, with its thresholds.
    [previous] = calibration["history"]
    assert previous["image_threshold"] == previous["pixel_threshold"] == RAW_THRESHOLD
    assert previous["method"] == "quantile" and previous["normalization"]["image"] == [0.0, 0.5]
    # Only the metadata changed: the graph is byte for byte the same, and the runtime reads the file.
    assert onnx.load(str(model)).graph.SerializeToString() == graph_before
    assert "0.25 -> 0.343" in result.output and "1 earlier calibration(s)" in result.output
    inspected = invoke("inspect", good, "--model", model, "--out", model.parent / "out", "-q")
    assert inspected.exit_code == 0, inspected.output
    records = [json.loads(line) for line in (model.parent / "out" / "report.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records if r["label"] == "anomalous"] == ["g18.png"]  # above value 215


def test_f1_recalibration_with_defects_and_masks_then_info_lists_two_earlier_calibrations(station):
    model, good, defective, masks = station
    assert invoke("calibrate", model, "--good", good, "--false-reject-rate", "0.1", "-q").exit_code == 0

    result = invoke("calibrate", model, "--good", good, "--defective", defective, "--mask-dir", masks, "-q")

    assert result.exit_code == 0, result.output
    meta = metadata_of(model)
    # F1: halfway between the highest good score (spot 220) and the lowest defective one (white, 0.5);
    # pixels alike: the masks cover exactly the white spots.
    halfway = float(np.float32((raw(220) + raw(255)) / 2))
    assert meta["image_threshold"] == pytest.approx(halfway, abs=1e-7)
    assert meta["pixel_threshold"] == pytest.approx(halfway, abs=1e-7)
    assert meta["calibration"]["method"] == "f1" and meta["calibration"]["data"]["anomalous"] == 3
    history = meta["calibration"]["history"]
    assert [entry["image_threshold"] for entry in history] == pytest.approx(
        [RAW_THRESHOLD, raw(215)], abs=1e-7
    )
    assert "history" not in history[1]  # flat: one list, oldest first

    info = invoke("info", model)
    assert info.exit_code == 0, info.output
    lines = info.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("history"))
    assert "2 earlier calibration(s)" in lines[start]
    assert "quantile, target 0.01" in lines[start + 1] and "image 0.25" in lines[start + 1]
    assert "quantile, target 0.1" in lines[start + 2] and f"image {raw(215):.6g}" in lines[start + 2]
    assert json.loads(invoke("info", model, "--json").output)["metadata"]["calibration"]["history"] == history


def test_dry_run_shows_the_change_and_writes_nothing(station):
    model, good, _, _ = station
    before = model.read_bytes()
    result = invoke("calibrate", model, "--good", good, "--false-reject-rate", "0.1", "--dry-run", "-q")
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output and model.read_bytes() == before


def test_too_few_good_images_for_the_rate_is_one_line_unless_allowed(station):
    model, good, _, _ = station
    before = model.read_bytes()
    refused = invoke("calibrate", model, "--good", good, "--false-reject-rate", "0.01", "-q")
    assert refused.exit_code == 2
    assert refused.output.count("\n") == 1 and "19 normal calibration images cannot resolve" in refused.output
    assert "give 99 or more (more good images)" in refused.output and "--allow-too-few" in refused.output
    assert model.read_bytes() == before

    allowed = invoke(
        "calibrate", model, "--good", good, "--false-reject-rate", "0.01", "--allow-too-few", "-q"
    )
    assert allowed.exit_code == 0, allowed.output
    assert "warning: 19 normal calibration images" in allowed.output
    meta = metadata_of(model)
    assert meta["image_threshold"] == pytest.approx(raw(220), abs=1e-7)  # the highest good score
    assert meta["calibration"]["data"]["promised_false_reject_rate"] == pytest.approx(1 / 20)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty good folder", "holds no images"),
        ("missing good folder", "(--good) not found"),
        ("rate with defects", "--false-reject-rate sets the quantile method's target"),
        ("masks without defects", "--mask-dir given without --defective"),
        ("no calibration fields", "metadata lacks image_threshold, pixel_threshold"),
        ("not a model", "not a loadable ONNX model"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2_and_leaves_the_model(station, tmp_path, case, message):
    model, good, defective, masks = station
    args = ["calibrate", model, "--good", good, "-q"]
    if case == "empty good folder":
        (tmp_path / "empty").mkdir()
        args[3] = tmp_path / "empty"
    elif case == "missing good folder":
        args[3] = tmp_path / "nowhere"
    elif case == "rate with defects":
        args += ["--defective", defective, "--false-reject-rate", "0.1"]
    elif case == "masks without defects":
        args += ["--mask-dir", masks]
    elif case == "no calibration fields":
        values = json.loads(contract_metadata((32, 32), 3).to_json())
        for name in ("image_threshold", "pixel_threshold", "normalization"):
            del values[name]
        build_deviation_model(model, metadata=json.dumps(values))
    elif case == "not a model":
        model.write_bytes(b"not a model")
    before = model.read_bytes()

    result = invoke(*args)

    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output
    assert model.read_bytes() == before


def test_calibrate_runs_on_the_base_install_without_torch_or_onnx(station):
    model, good, _, _ = station
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; "
        "from inspector.cli import main; "
        f"sys.argv = ['inspector', 'calibrate', {str(model)!r}, '--good', {str(good)!r}, "
        "'--false-reject-rate', '0.1', '-q']; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert metadata_of(model)["image_threshold"] == pytest.approx(raw(215), abs=1e-7)


# --- the metadata writer without the onnx package -----------------------------------------------------------


def test_replacing_a_metadata_prop_equals_what_onnx_writes_and_keeps_the_other_props(tmp_path):
    model_path = build_deviation_model(tmp_path / "model.onnx")
    model = onnx.load(str(model_path))
    onnx.helper.set_model_props(model, {METADATA_KEY: "old", "other": "kept", "ünï": "çødé"})
    data = model.SerializeToString()

    replaced = replace_metadata_prop(data, METADATA_KEY, '{"new": "välue"}')

    assert read_metadata_props(replaced) == {"other": "kept", "ünï": "çødé", METADATA_KEY: '{"new": "välue"}'}
    expected = onnx.load_from_string(data)
    expected.metadata_props[0].value = '{"new": "välue"}'  # what onnx would write for the same change
    parsed = onnx.load_from_string(replaced)
    assert {p.key: p.value for p in parsed.metadata_props} == {
        p.key: p.value for p in expected.metadata_props
    }
    parsed_without, expected_without = onnx.ModelProto(), onnx.ModelProto()
    parsed_without.CopyFrom(parsed)
    expected_without.CopyFrom(expected)
    del parsed_without.metadata_props[:]
    del expected_without.metadata_props[:]
    assert parsed_without == expected_without
    onnx.checker.check_model(parsed)
    ModelMetadata.from_json(read_metadata_props(model_path.read_bytes())[METADATA_KEY])


@pytest.mark.parametrize("data", [b"", b"\x0a\xff", b"\x0f", b"\x72\x05ab"])
def test_bytes_that_are_no_protobuf_message_are_refused(data):
    with pytest.raises(NotAnOnnxModelError):
        replace_metadata_prop(data, METADATA_KEY, "{}")
