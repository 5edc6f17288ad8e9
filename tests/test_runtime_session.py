"""Loading a model for the runtime: metadata checks, execution providers and their fallback."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from runtime_images import part, write_png
from runtime_models import build_deviation_model, contract_metadata

from inspector.artifact import METADATA_KEY
from inspector.cli import cli
from inspector.errors import ArtifactError, InspectorError
from inspector.runtime import session as session_module
from inspector.runtime.session import CPU, choose_providers, default_threads, load_model

CUDA, COREML, TENSORRT = "CUDAExecutionProvider", "CoreMLExecutionProvider", "TensorrtExecutionProvider"


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_png(folder / "part.png", part(48, 64))
    return folder


def inspect(*args):
    return CliRunner().invoke(cli, ["inspect", *map(str, args)])


def test_auto_prefers_cuda_then_coreml_then_cpu():
    assert choose_providers("auto", [TENSORRT, CUDA, COREML, CPU]) == ([CUDA, CPU], None)
    assert choose_providers("auto", [COREML, CPU]) == ([COREML, CPU], None)
    assert choose_providers("auto", [CPU]) == ([CPU], None)


def test_tensorrt_is_used_when_present_and_asked_for_with_cuda_and_cpu_behind_it():
    assert choose_providers("tensorrt", [TENSORRT, CUDA, CPU]) == ([TENSORRT, CUDA, CPU], None)


@pytest.mark.parametrize(
    "device, package",
    [
        ("cuda", "onnxruntime-gpu"),
        ("coreml", "onnxruntime-silicon"),
        ("openvino", "onnxruntime-openvino"),
        ("tensorrt", "TensorRT"),
    ],
)
def test_missing_provider_falls_back_to_cpu_naming_the_package_to_install(device, package):
    providers, warning = choose_providers(device, [CPU])
    assert providers == [CPU]
    assert package in warning and "CPU" in warning and "\n" not in warning
    with pytest.raises(InspectorError, match=package):
        choose_providers(device, [CPU], strict=True)


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_inspect_on_a_missing_gpu_warns_once_and_still_scores_on_the_cpu(tmp_path, photos):
    model = build_deviation_model(tmp_path / "model.onnx")
    result = inspect(photos, "--model", model, "--out", tmp_path / "out", "--device", "cuda", "-q")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "onnxruntime-gpu" in warnings[0] and "CPU" in warnings[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["scored"] == 1 and summary["providers"] == [CPU]

    strict = inspect(
        photos, "--model", model, "--out", tmp_path / "strict", "--device", "cuda", "--strict-device"
    )
    assert strict.exit_code == 2
    assert strict.stderr.startswith("error:") and "onnxruntime-gpu" in strict.stderr
    assert "Traceback" not in strict.output and not (tmp_path / "strict").exists()


def test_a_gpu_provider_that_is_installed_but_cannot_start_falls_back_with_a_warning(tmp_path, monkeypatch):
    if CUDA in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    # An onnxruntime-gpu wheel on a machine without the CUDA libraries: listed, but it cannot start.
    monkeypatch.setattr(session_module.ort, "get_available_providers", lambda: [CUDA, CPU])
    model = build_deviation_model(tmp_path / "model.onnx")
    warnings = []
    session = load_model(model, device="cuda", warn=warnings.append)
    assert session.providers == [CPU]
    assert len(warnings) == 1 and "could not start" in warnings[0] and "CPU" in warnings[0]
    with pytest.raises(InspectorError, match="could not start"):
        load_model(model, device="cuda", strict_device=True, warn=warnings.append)


def test_model_without_inspector_metadata_is_refused_with_exit_code_2(tmp_path, photos):
    model = build_deviation_model(tmp_path / "bare.onnx", metadata=None)
    result = inspect(photos, "--model", model, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert f"no '{METADATA_KEY}' metadata" in result.stderr and "bare.onnx" in result.stderr
    assert "inspector export" in result.stderr and "Traceback" not in result.output


def test_unknown_schema_and_missing_fields_are_refused_naming_what_is_wrong(tmp_path):
    future = json.loads(contract_metadata((32, 32), 3).to_json())
    future["schema"] = 99
    with pytest.raises(ArtifactError, match="schema 99"):
        load_model(build_deviation_model(tmp_path / "future.onnx", metadata=json.dumps(future)))
    partial = json.loads(contract_metadata((32, 32), 3).to_json())
    del partial["pixel_threshold"]
    with pytest.raises(ArtifactError, match="pixel_threshold"):
        load_model(build_deviation_model(tmp_path / "partial.onnx", metadata=json.dumps(partial)))


def test_a_file_that_is_not_an_onnx_model_or_is_missing_is_a_clear_error(tmp_path, photos):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not protobuf")
    result = inspect(photos, "--model", junk, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "not a loadable ONNX model" in result.stderr
    with pytest.raises(InspectorError, match="not found"):
        load_model(tmp_path / "missing.onnx")


def test_a_model_whose_outputs_break_the_contract_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["reconstruction"])],
        "wrong",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["N", 3, 32, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: contract_metadata((32, 32), 3).to_json()})
    onnx.save(model, str(tmp_path / "wrong.onnx"))
    with pytest.raises(ArtifactError, match="score, anomaly_map"):
        load_model(tmp_path / "wrong.onnx")


def test_loaded_model_exposes_input_size_channels_and_calibration(tmp_path):
    session = load_model(
        build_deviation_model(tmp_path / "m.onnx", input_size=(24, 40), channels=1), threads=1
    )
    assert session.input_size == (24, 40) and session.channels == 1
    assert session.calibration.image_threshold == pytest.approx(0.25)
    assert session.providers == [CPU]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="thread affinity is read on Linux")
def test_inference_threads_are_not_pinned_to_cores_so_decode_threads_cannot_stall_them(tmp_path):
    def thread_ids():
        return {int(tid) for tid in os.listdir(f"/proc/{os.getpid()}/task")}

    before = thread_ids()
    session = load_model(build_deviation_model(tmp_path / "m.onnx"))
    session.run(np.zeros((1, 3, 32, 32), np.float32))  # starts onnxruntime's thread pool
    allowed = os.sched_getaffinity(0)
    assert all(os.sched_getaffinity(tid) == allowed for tid in thread_ids() - before)
    assert 1 <= default_threads() <= len(allowed)


def test_throughput_runs_give_each_worker_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(session_module, "physical_cores", lambda: 4)
    assert session_module.threads_per_worker(0) == (4, 1)  # default: one call per core, side by side
    assert session_module.threads_per_worker(1) == (1, 4)  # one worker: every core to each call
    assert session_module.threads_per_worker(3) == (3, 1)
    assert session_module.threads_per_worker(2, threads=3) == (2, 3)  # an explicit count is kept


def test_model_calls_side_by_side_on_one_session_give_the_same_outputs(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    session = load_model(build_deviation_model(tmp_path / "m.onnx"), threads=1)
    batches = [np.random.default_rng(seed).random((4, 3, 32, 32), dtype=np.float32) for seed in range(6)]
    one_at_a_time = [session.run(batch) for batch in batches]
    with ThreadPoolExecutor(max_workers=3) as pool:
        side_by_side = list(pool.map(session.run, batches))
    for (scores, maps), (expected_scores, expected_maps) in zip(side_by_side, one_at_a_time):
        np.testing.assert_array_equal(scores, expected_scores)
        np.testing.assert_array_equal(maps, expected_maps)
    assert session.threads == 1
