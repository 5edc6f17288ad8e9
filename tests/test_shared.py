"""The shared pieces every side uses: preprocessing, normalisation, the artifact contract, configuration."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from inspector.artifact import SCHEMA_VERSION, ModelMetadata
from inspector.calibration import Calibration
from inspector.config import load_config
from inspector.errors import ArtifactError, ImageReadError, InspectorError
from inspector.normalization import normalize
from inspector.preprocess import prepare_batch, read_image, resize_image, resize_map, to_model_input


def test_png_is_read_as_rgb_not_bgr(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[:, :, 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image(tmp_path / "red.png")
    assert rgb.shape == (4, 6, 3)
    assert rgb[0, 0].tolist() == [200, 0, 0]


def test_sixteen_bit_gray_image_is_scaled_not_truncated(tmp_path):
    gray16 = np.full((5, 5), 65535, np.uint16)
    gray16[0, 0] = 32768
    cv2.imwrite(str(tmp_path / "deep.png"), gray16)
    rgb = read_image(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 5, 3)
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[0, 0, 0] == 128


def test_unreadable_files_raise_image_read_error_naming_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    for name in ("empty.png", "text.jpg", "folder.png", "missing.png"):
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)


def test_model_input_is_whole_image_resized_in_unit_range():
    image = np.zeros((60, 100, 3), np.uint8)
    image[:, 50:] = 255
    tensor = to_model_input(image, (32, 48), channels=3)
    assert tensor.shape == (3, 32, 48) and tensor.dtype == np.float32
    assert tensor.min() == 0.0 and tensor.max() == 1.0
    # No crop: the right half of the input stays the right half of the model input.
    assert tensor[:, :, :23].max() < 0.01 and tensor[:, :, 25:].min() > 0.99
    gray = to_model_input(image, (32, 48), channels=1)
    assert gray.shape == (1, 32, 48)


def test_shrinking_is_antialiased():
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255
    small = resize_image(stripes, (16, 16))
    # Area averaging turns one-pixel stripes into flat grey rather than aliasing to black or white.
    assert np.abs(small.astype(int) - 127).max() <= 1


def test_prepare_batch_stacks_images_of_different_sizes():
    batch = prepare_batch([np.zeros((10, 20, 3), np.uint8), np.zeros((40, 30, 3), np.uint8)], (8, 8), 3)
    assert batch.shape == (2, 3, 8, 8)


def test_anomaly_map_resized_back_to_original_resolution():
    anomaly_map = np.zeros((8, 8), np.float32)
    anomaly_map[:, 4:] = 1.0
    full = resize_map(anomaly_map, 30, 80)
    assert full.shape == (30, 80)
    assert full[:, :35].max() < 0.01 and full[:, 45:].min() > 0.99


def test_normalize_puts_threshold_at_half_and_clips():
    values = normalize(np.array([2.0, 2.5, 100.0, -100.0]), threshold=2.0, minimum=1.0, maximum=3.0)
    assert values.tolist() == [0.5, 0.75, 1.0, 0.0]


def _metadata() -> ModelMetadata:
    calibration = Calibration(
        0.3, 0.4, 0.1, 0.9, 0.0, 1.0, method="quantile", target=0.01, data={"normal": 5}
    )
    return ModelMetadata.from_calibration("rdna", (64, 96), 3, calibration, {"dataset": "synthetic"})


def test_metadata_round_trips_and_restores_calibration():
    metadata = _metadata()
    parsed = ModelMetadata.from_json(metadata.to_json())
    assert parsed == metadata
    calibration = parsed.to_calibration()
    assert (
        calibration.image_threshold == 0.3
        and calibration.pixel_max == 1.0
        and calibration.method == "quantile"
    )
    assert json.loads(metadata.to_json())["schema"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no 'inspector' metadata"),
        ("{not json", "not valid JSON"),
        (json.dumps({"schema": 99}), "schema 99 is not supported"),
        (json.dumps({"schema": SCHEMA_VERSION, "detector": "rdna"}), "lacks"),
    ],
)
def test_bad_metadata_is_refused_with_a_reason(text, message):
    with pytest.raises(ArtifactError, match=message):
        ModelMetadata.from_json(text, source="m.onnx")


def test_config_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("detector: draem\ninput_size: [64, 64]\ndata:\n  format: mvtec\n  category: bottle\n")
    config = load_config(path, {"data.category": "cable", "epochs": 3, "seed": None})
    assert (config.detector, config.data.format, config.data.category, config.epochs) == (
        "draem",
        "mvtec",
        "cable",
        3,
    )
    config.save(tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config
    path.write_text("detecter: rdna\n")
    with pytest.raises(InspectorError, match="unknown key 'detecter'"):
        load_config(path)
