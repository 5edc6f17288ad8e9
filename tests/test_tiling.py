"""Tiled scoring for camera resolution: the tile grid, stitching, the metadata, the runtime and the export."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from runtime_models import build_deviation_model

import inspector
from inspector.artifact import INPUT_NAME, MAP_OUTPUT, METADATA_KEY, SCORE_OUTPUT, ModelMetadata
from inspector.calibration import Calibration, calibrate
from inspector.errors import ArtifactError
from inspector.export.writer import with_metadata
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model
from inspector.runtime.tiling import TileBatch
from inspector.tiling import Tiling, mean_filtered_max, stitch, tile_starts

# --- the grid ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length, tile, stride",
    [
        (300, 128, 96),
        (256, 128, 96),
        (128, 128, 96),
        (129, 128, 96),
        (2048, 256, 192),
        (1000, 96, 1),
        (97, 32, 32),
    ],
)
def test_tiles_cover_the_axis_exactly_edges_included_with_steps_at_most_the_stride(length, tile, stride):
    starts = tile_starts(length, tile, stride)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))
    covered = np.zeros(length, int)
    for start in starts:
        covered[start : start + tile] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize("image_size", [(300, 257), (128, 200), (1080, 1920)])
def test_tiles_cover_every_pixel_of_an_image_whose_size_is_no_multiple_of_the_stride(image_size):
    tiling = Tiling.with_overlap(128, image_size, score_window=5)
    covered = np.zeros(image_size, int)
    for top, left in tiling.origins():
        assert top + 128 <= image_size[0] and left + 128 <= image_size[1]
        covered[top : top + 128, left : left + 128] += 1
    assert covered.min() >= 1
    assert (covered[0].min(), covered[-1].min(), covered[:, 0].min(), covered[:, -1].min()) >= (1, 1, 1, 1)


def test_stitching_a_constant_map_gives_that_constant_everywhere():
    tiling = Tiling.with_overlap(64, (300, 257), score_window=5)
    constant = np.full((len(tiling.origins()), 64, 64), 0.37, np.float32)
    stitched = tiling.stitch(constant)
    assert stitched.shape == (300, 257)
    np.testing.assert_allclose(stitched, 0.37, rtol=1e-6)


def test_stitching_the_tiles_cut_from_a_map_gives_the_map_back():
    tiling = Tiling.with_overlap(64, (300, 257), score_window=5, overlap=0.4)
    full = np.random.default_rng(0).random((1, 300, 257), dtype=np.float32)
    tiles = tiling.cut(full)[:, 0]
    assert tiles.shape == (len(tiling.origins()), 64, 64)
    np.testing.assert_allclose(tiling.stitch(tiles), full[0], rtol=1e-6)


def test_overlaps_fade_towards_the_tile_whose_centre_is_nearer():
    # Two 8-pixel tiles on a 12-pixel axis overlap on pixels 4..7: tile A reads 0, tile B reads 1.
    maps = np.stack([np.zeros((1, 8), np.float32), np.ones((1, 8), np.float32)])
    row = stitch(maps, [(0, 0), (0, 4)], (1, 12), (1, 8), (1, 4))[0]
    assert list(row[:4]) == [0, 0, 0, 0] and list(row[8:]) == [1, 1, 1, 1]
    assert np.all(np.diff(row[3:9]) > 0)  # rises monotonically through the overlap, no seam


@pytest.mark.parametrize("window", [1, 2, 4, 5, 21])
def test_the_image_score_is_dreams_mean_filtered_max(window):
    torch = pytest.importorskip("torch")
    from inspector.training.detectors.draem import mean_filtered_max as torch_score

    anomaly_map = np.random.default_rng(window).random((37, 50), dtype=np.float32)
    expected = float(torch_score(torch.from_numpy(anomaly_map)[None, None], window)[0])
    assert mean_filtered_max(anomaly_map, window) == pytest.approx(expected, rel=1e-6)


# --- the metadata --------------------------------------------------------------------------------------


def tiled_metadata(
    tiling: Tiling | None, calibration: Calibration | None = None, size: tuple[int, int] = (64, 64)
) -> ModelMetadata:
    size = tiling.tile if tiling is not None else size
    metadata = ModelMetadata.from_calibration("test", size, 3, calibration, {"dataset": "tests"})
    metadata.tiling = tiling.to_dict() if tiling is not None else None
    return metadata


def test_tiling_metadata_round_trips_through_the_model_file():
    tiling = Tiling.with_overlap(128, (1024, 768), score_window=5)
    loaded = ModelMetadata.from_json(tiled_metadata(tiling).to_json())
    assert Tiling.from_dict(loaded.tiling) == tiling
    assert loaded.tiling == {
        "tile": [128, 128],
        "image_size": [1024, 768],
        "stride": [96, 96],
        "stitch": "weighted_mean",
        "score": {"method": "mean_filtered_max", "window": 5},
    }


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stitch": "max"}, "stitch 'max' is unknown"),
        ({"tile": [128, 96], "stride": [96, 64]}, "tile equals input_size"),
        ({"stride": [200, 96]}, "larger than the tile"),
        ({"image_size": [100, 1024]}, "larger than image_size"),
        ({"score": {"method": "max"}}, "score must be"),
        ({"stride": "96"}, "stride must be"),
    ],
)
def test_a_broken_tiling_is_refused_at_load_naming_the_field(change, message):
    values = json.loads(tiled_metadata(Tiling.with_overlap(128, (1024, 768), score_window=5)).to_json())
    values["tiling"].update(change)
    with pytest.raises(ArtifactError, match=rf"metadata field 'tiling'.*{message}"):
        ModelMetadata.from_json(json.dumps(values), source="m.onnx")


def test_a_model_without_tiling_scores_the_whole_image_as_before(tmp_path):
    path = build_deviation_model(tmp_path / "model.onnx", input_size=(32, 32))
    assert "tiling" not in json.loads(onnx.load(str(path)).metadata_props[0].value)
    session = load_model(path, "cpu")
    assert session.tiling is None and session.image_size == (32, 32)
    scorer = Scorer(session)
    image = np.full((300, 200, 3), 128, np.uint8)
    image[100:140, 50:90] = 255
    batch = scorer.prepare([image])
    assert isinstance(batch, np.ndarray) and batch.shape == (1, 3, 32, 32)
    inspection = scorer.score([image])[0]
    assert inspection.anomaly_map.shape == (32, 32)
    assert inspection.raw_score == pytest.approx(float(session.run(batch)[0][0]))
    assert inspector.load_model(path, device="cpu").tiling is None


# --- a defect a few pixels wide in a 2048x2048 image -------------------------------------------------------

TILE = 256
SCORE_WINDOW = 5
CAMERA = 2048
STRIPE_PERIOD = 64  # pixels at camera resolution: 8 pixels once the frame is resized to 256x256


def local_contrast_graph() -> bytes:
    """A fully convolutional ONNX graph whose map is local contrast: |gray - its 5x5 mean|, and whose score
    is DRAEM's (the maximum of the map's ``SCORE_WINDOW`` x ``SCORE_WINDOW`` mean)."""
    pool = {"count_include_pad": 0, "strides": [1, 1]}
    half = SCORE_WINDOW // 2
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME], ["gray"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["local"], kernel_shape=[5, 5], pads=[2] * 4, **pool),
        helper.make_node("Sub", ["gray", "local"], ["difference"]),
        helper.make_node("Abs", ["difference"], [MAP_OUTPUT]),
        helper.make_node(
            "AveragePool",
            [MAP_OUTPUT],
            ["smoothed"],
            kernel_shape=[SCORE_WINDOW] * 2,
            pads=[half] * 4,
            **pool,
        ),
        helper.make_node("ReduceMax", ["smoothed"], [SCORE_OUTPUT], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "local-contrast",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, TILE, TILE])],
        [
            helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info(MAP_OUTPUT, TensorProto.FLOAT, ["N", 1, TILE, TILE]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_model(path: Path, tiling: Tiling | None, calibration: Calibration | None) -> Path:
    """The graph with real metadata, written by the export's own metadata writer."""
    metadata = tiled_metadata(tiling, calibration, size=(TILE, TILE))
    path.write_bytes(with_metadata(local_contrast_graph(), {METADATA_KEY: metadata.to_json()}))
    return path


def striped_surface(amplitude: float, phase: float) -> np.ndarray:
    """A normal surface at camera resolution: vertical stripes, 128 +- ``amplitude`` gray levels."""
    columns = 128 + amplitude * np.sin(2 * np.pi * np.arange(CAMERA) / STRIPE_PERIOD + phase)
    row = np.clip(np.round(columns), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(row[None, :, None], (CAMERA, CAMERA, 3)))


def calibrated_model(path: Path, tiling: Tiling | None, normals: list[np.ndarray]) -> Path:
    """Calibrate the model on normal images scored through its own path (whole or tiled), as export does."""
    scorer = Scorer(load_model(write_model(path, tiling, None), "cpu"))
    raw_scores, raw_maps = scorer.infer(scorer.prepare(normals))
    calibration = calibrate(raw_scores, np.zeros(len(normals)), raw_maps, method="quantile")
    return write_model(path, tiling, calibration)


@dataclass
class CameraCase:
    whole: Path
    tiled: Path
    defective: np.ndarray
    clean: np.ndarray
    spot: tuple[int, int]  # x, y of the 3x3 spot's top-left pixel


@pytest.fixture(scope="module")
def camera_case(tmp_path_factory) -> CameraCase:
    """Two models of one local-contrast graph, calibrated on the same normal surfaces scored their own way,
    and a 2048x2048 frame with a black 3x3 spot (and its twin without it).

    The model is a hand-built ONNX graph (local contrast), not a trained one: a few training steps do not
    reliably learn a detector, and the claim is about scale, which the scoring path decides, not the
    weights. Both models run the same graph on 256x256 inputs and carry real metadata, written by the
    export's metadata writer: "whole" resizes the 2048x2048 frame to 256x256; "tiled" scores it at full
    resolution in 121 overlapping 256x256 tiles.

    Normal surfaces are stripes 64 pixels apart: gentle at camera resolution, but 8 pixels apart after the
    8x resize, where they are the strongest local contrast. The defect is a black 3x3 spot: strong at
    camera resolution, averaged into a faint 8x8 cell (9/64 of its contrast) by the resize.
    """
    folder = tmp_path_factory.mktemp("camera")
    rng = np.random.default_rng(0)
    normals = [striped_surface(rng.uniform(50, 70), rng.uniform(0, 2 * np.pi)) for _ in range(3)]
    spot_x, spot_y = 1003, 1501  # inside one 8x8 cell of the resize; in the overlap of two tiles
    defective = striped_surface(60, -2 * np.pi * (spot_x + 1) / STRIPE_PERIOD)  # spot on a mid-gray column
    clean = defective.copy()
    defective[spot_y : spot_y + 3, spot_x : spot_x + 3] = 0
    tiling = Tiling.with_overlap(TILE, (CAMERA, CAMERA), SCORE_WINDOW)
    assert len(tiling.origins()) == 121
    return CameraCase(
        calibrated_model(folder / "whole.onnx", None, normals),
        calibrated_model(folder / "tiled.onnx", tiling, normals),
        defective,
        clean,
        (spot_x, spot_y),
    )


def test_a_defect_3_pixels_wide_in_a_2048_image_is_found_tiled_and_lost_when_the_image_is_resized(
    camera_case,
):
    """A hand-built local-contrast graph, not a trained model (see :func:`camera_case` for why and how)."""
    spot_x, spot_y = camera_case.spot
    whole = inspector.load_model(camera_case.whole, device="cpu")
    lost, lost_clean = whole.score([camera_case.defective, camera_case.clean])
    assert not lost.anomalous and lost.regions == []
    assert lost.raw_score == lost_clean.raw_score  # the resized frame's score does not move at all
    assert not lost.inspection.full_anomaly_map()[spot_y : spot_y + 3, spot_x : spot_x + 3].max() > 0.5

    tiled = inspector.load_model(camera_case.tiled, device="cpu")
    found, found_clean = tiled.score([camera_case.defective, camera_case.clean])
    assert found.anomalous and not found_clean.anomalous
    assert found.raw_score > 5 * tiled.session.calibration.image_threshold
    assert found.inspection.anomaly_map.shape == (CAMERA, CAMERA)  # the stitched map, at camera resolution
    assert len(found.regions) == 1
    region = found.regions[0]
    assert region.x <= spot_x and region.y <= spot_y
    assert region.x + region.width >= spot_x + 3 and region.y + region.height >= spot_y + 3
    assert region.width <= 12 and region.height <= 12  # a few pixels, where the spot is


def test_inspect_and_the_stream_watch_uses_score_a_tiled_model_without_options(camera_case, tmp_path):
    from click.testing import CliRunner
    from runtime_images import write_png

    from inspector.cli import cli

    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(photos / "defective.png", camera_case.defective)
    write_png(photos / "clean.png", camera_case.clean)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["inspect", str(photos), "--model", str(camera_case.tiled), "--out", str(out), "--save", "none"]
    )
    assert result.exit_code == 0, result.output
    records = {
        record["path"]: record
        for record in map(json.loads, (out / "report.jsonl").read_text(encoding="utf-8").splitlines())
    }
    assert records["defective.png"]["label"] == "anomalous" and records["clean.png"]["label"] == "normal"
    region = records["defective.png"]["regions"][0]
    spot_x, spot_y = camera_case.spot
    assert region["x"] <= spot_x < spot_x + 3 <= region["x"] + region["width"]
    assert region["y"] <= spot_y < spot_y + 3 <= region["y"] + region["height"]

    model = inspector.load_model(camera_case.tiled, device="cpu")
    streamed = {result.path: result.anomalous for result in model.stream(photos)}
    assert streamed == {"clean.png": False, "defective.png": True}


def test_the_python_api_scores_a_tiled_model_in_tiles(tmp_path):
    tiling = Tiling.with_overlap(TILE, (512, 768), SCORE_WINDOW)  # 12 tiles an image, 8 a model call
    model = inspector.load_model(write_model(tmp_path / "model.onnx", tiling, None), device="cpu")
    assert model.tiling == tiling.to_dict() and model.input_size == (TILE, TILE)
    first = np.full((1080, 1620, 3), 128, np.uint8)
    first[500:520, 800:820] = 0
    second = np.full((1080, 1620, 3), 128, np.uint8)
    second[100:110, 1500:1530] = 255
    prepared = model.scorer.prepare([first, second])
    assert isinstance(prepared, TileBatch)
    assert [image.shape for image in prepared.images] == [(3, 512, 768)] * 2  # whole, cut per model call
    scores, maps = model.scorer.infer(prepared)
    for image, score, anomaly_map in zip((first, second), scores, maps):
        alone_scores, alone_maps = model.scorer.infer(model.scorer.prepare([image]))
        np.testing.assert_array_equal(anomaly_map, alone_maps[0])  # model calls spanning two images
        assert score == alone_scores[0] == pytest.approx(mean_filtered_max(anomaly_map, SCORE_WINDOW))
    assert maps[0].argmax() != maps[1].argmax()
    result = model.score(first)
    assert result.raw_score == pytest.approx(float(scores[0]))
    assert result.inspection.anomaly_map.shape == (512, 768)
    assert result.inspection.full_anomaly_map().shape == (1080, 1620)


# --- a trained run exported with --tile ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiled_run(tmp_path_factory):
    """A tiny DRAEM trained 3 steps on 32x32 crops of 64x64 images, calibrated, exported with --tile."""
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from inspector.cli import cli
    from inspector.config import load_config
    from inspector.training.data.synthetic import generate_dataset
    from inspector.training.evaluate import evaluate_run
    from inspector.training.trainer import train

    root = tmp_path_factory.mktemp("tiled")
    generate_dataset(
        root / "data", ["fabric"], image_size=64, train_count=10, test_good=2, test_defect_per_kind=1
    )
    config = load_config(
        None,
        {
            "name": "tiled",
            "detector": "draem",
            "detector_options": {"reconstruction_width": 4, "segmentation_width": 4, "score_window": 3},
            "input_size": [64, 64],
            "crop_size": 32,
            "data.format": "synthetic",
            "data.root": str(root / "data"),
            "data.category": "fabric",
            "data.val_fraction": 0.3,
            "data.workers": 0,
            "max_steps": 3,
            "batch_size": 2,
            "val_every_steps": 3,
            "device": "cpu",
            "out": str(root / "runs"),
        },
    )
    run_dir = Path(train(config, progress=False, evaluate=False, log=lambda *args: None))
    evaluate_run(run_dir, plots=False, log=lambda *args: None)
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--tile", "--no-components"])
    assert result.exit_code == 0, result.output
    return run_dir, run_dir / "export" / "model.onnx", result.output


def test_export_tile_writes_a_one_tile_graph_with_its_tiling_and_tiled_calibration(tiled_run):
    run_dir, model_path, output = tiled_run
    assert "recalibrated on" in output and "scored tiled" in output
    model = inspector.load_model(model_path, device="cpu")
    assert model.input_size == (32, 32)
    assert model.tiling == Tiling.with_overlap(32, (64, 64), score_window=3).to_dict()
    assert model.metadata["calibration"]["data"]["scored"] == "tiled"
    whole = json.loads((run_dir / "calibration.json").read_text())
    assert "scored" not in whole.get("data", {})  # the run's own calibration is left as it was


def test_the_runtime_scores_a_tiled_export_as_the_export_calibrated_it(tiled_run):
    torch = pytest.importorskip("torch")
    from inspector.export.tiling import TiledScoring
    from inspector.preprocess import prepare_batch
    from inspector.training.checkpoint import load_detector

    run_dir, model_path, _ = tiled_run
    detector, _, _ = load_detector(run_dir)
    model = inspector.load_model(model_path, device="cpu")
    tiling = model.session.tiling
    images = [
        np.random.default_rng(seed).integers(0, 256, (150, 110, 3), dtype=np.uint8) for seed in range(2)
    ]
    runtime_scores, runtime_maps = model.scorer.infer(model.scorer.prepare(images))
    torch_scores, torch_maps = TiledScoring(detector.eval(), tiling)(
        torch.from_numpy(prepare_batch(images, tiling.image_size, 3))
    )
    np.testing.assert_allclose(runtime_maps, torch_maps.numpy()[:, 0], atol=1e-4)
    np.testing.assert_allclose(runtime_scores, torch_scores.numpy(), atol=1e-4)
    result = model.score(images[0])
    assert result.inspection.anomaly_map.shape == (64, 64)


def test_export_tile_refuses_a_run_not_trained_on_crops_and_a_detector_without_a_map_score():
    pytest.importorskip("torch")
    from inspector.config import load_config
    from inspector.errors import InspectorError
    from inspector.export.tiling import tiling_for_run
    from inspector.training.detectors import build_detector

    config = load_config(None, {"detector": "draem", "input_size": [64, 64]})
    detector = build_detector("draem", (64, 64), 3, {"reconstruction_width": 4, "segmentation_width": 4})
    with pytest.raises(InspectorError, match="not trained on crops"):
        tiling_for_run(detector, config)
    config.crop_size = 32
    assert tiling_for_run(detector, config).tile == (32, 32)
    vae = build_detector("memvae", (64, 64), 3)
    with pytest.raises(InspectorError, match="does not score an image from its anomaly map"):
        tiling_for_run(
            vae, load_config(None, {"detector": "memvae", "input_size": [64, 64], "crop_size": 32})
        )


def test_info_describes_the_tiling_of_a_tiled_model_and_nothing_for_a_whole_image_one(camera_case):
    from click.testing import CliRunner

    from inspector.cli import cli

    tiled = CliRunner().invoke(cli, ["info", str(camera_case.tiled)])
    assert tiled.exit_code == 0, tiled.output
    assert "frames resized to 2048x2048, scored in 121 tiles of 256x256" in tiled.output
    whole = CliRunner().invoke(cli, ["info", str(camera_case.whole)])
    assert whole.exit_code == 0, whole.output
    assert "tiling" not in whole.output


def test_bench_generates_camera_size_images_for_a_tiled_model(camera_case):
    from click.testing import CliRunner

    from inspector.cli import cli

    result = CliRunner().invoke(
        cli, ["bench", "--model", str(camera_case.tiled), "--count", "2", "--repeats", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    assert measured["image_sizes"] == [[CAMERA, CAMERA]] and measured["image_size"] == [CAMERA, CAMERA]
    assert measured["input_size"] == [TILE, TILE]


def test_a_tiled_int8_export_is_calibrated_and_checked_on_tiles_at_the_image_scale(
    tiled_run, tmp_path, monkeypatch
):
    from click.testing import CliRunner

    import inspector.export.pipeline as pipeline
    from inspector.cli import cli
    from inspector.training.checkpoint import load_detector
    from inspector.training.data import build_splits

    seen = []

    class Seen(Exception):
        """Stops the export once the calibration images are seen (a 3-step model is no int8 parity case)."""

    def quantize(onnx_bytes, calibration_images):
        seen.append(calibration_images)
        raise Seen

    monkeypatch.setattr(pipeline, "quantize_int8", quantize)
    run_dir, _, _ = tiled_run
    out = tmp_path / "int8"
    result = CliRunner().invoke(
        cli, ["export", str(run_dir), "--tile", "--quantize", "int8", "--no-components", "--out", str(out)]
    )
    assert isinstance(result.exception, Seen), result.output
    assert "fp32 graph on 8 images (8 tiles cut from" in result.output
    _, config, _ = load_detector(run_dir)
    normals = pipeline.training_normals(build_splits(config), config.input_size, config.channels)
    tiling = Tiling.with_overlap(32, (64, 64), score_window=3)
    every_tile = np.concatenate([tiling.cut(image) for image in normals])
    (calibration,) = seen
    assert calibration.shape[1:] == (3, 32, 32) and len(calibration) > len(normals)
    for tile in calibration:  # each one a tile of a normal image at 64x64, not a whole image shrunk to 32x32
        assert np.abs(every_tile - tile).reshape(len(every_tile), -1).max(axis=1).min() < 1e-6
