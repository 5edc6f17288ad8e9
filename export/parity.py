"""Proof that an exported graph computes what the trained torch model computes.

``onnx.checker`` first, then onnxruntime against torch on real images of the run's data, turned into model
input by the same :func:`inspector.preprocess.prepare_batch` the runtime uses, at batch 1 and at a batch > 1.

Tolerance: the two sides run the same float32 arithmetic in a different order (onnxruntime's MLAS
kernels vs torch's oneDNN/ATen, fused vs unfused batch norm), so sums of hundreds of products round
differently. Measured on our detectors this leaves differences around 1e-7..1e-5 on anomaly maps in [0, 1].
We allow ``1e-4`` times the output's scale (its largest magnitude, at least 1): ten times above that noise,
and still a thousand times below anything that would move a heatmap colour (1/255 ≈ 4e-3) or a decision
other than for a value sitting within 1e-4 of its threshold. A wrong export (a frozen batch size, a
missing normalisation, train-mode batch norm) is off by 1e-2 or more and fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from inspector.artifact import INPUT_NAME, MAP_OUTPUT, SCORE_OUTPUT
from inspector.errors import InspectorError
from inspector.export.onnx_export import ScoringGraph
from inspector.io import list_images
from inspector.normalization import is_anomalous
from inspector.preprocess import IMAGE_EXTENSIONS, prepare_batch, read_image
from inspector.training.data.dataset import load_rgb
from inspector.training.data.samples import Splits
from inspector.training.detectors.base import Component, Detector

DEFAULT_TOLERANCE = 1e-4
DEFAULT_BATCH_SIZES = (1, 4)
DEFAULT_IMAGE_COUNT = 8


class ParityError(Exception):
    """The exported graph differs from the torch model by more than the tolerance (CLI exit code 1)."""


@dataclass
class ParityReport:
    """What the parity check measured; stored in the model's metadata as ``parity``.

    ``max_abs_diff`` holds the largest |onnxruntime - torch| of ``score`` and ``anomaly_map`` over every
    batch size; ``by_batch_size`` the same per batch size; ``allowed`` the tolerance scaled to each output;
    ``image_decision_flips`` / ``pixel_decision_flips`` count images / pixels whose side of the calibrated
    threshold differs between the two (out of ``images`` x batch sizes and ``pixels`` x batch sizes).
    """

    images: int
    image_source: str
    batch_sizes: list[int]
    tolerance: float
    allowed: dict[str, float]
    max_abs_diff: dict[str, float]
    by_batch_size: dict[str, dict[str, float]]
    image_decision_flips: int
    pixel_decision_flips: int
    pixels: int
    image_threshold: float
    pixel_threshold: float
    onnxruntime: str = ort.__version__
    provider: str = "CPUExecutionProvider"
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = all(self.max_abs_diff[name] <= self.allowed[name] for name in self.allowed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        batch_sizes = ", ".join(map(str, self.batch_sizes))
        header = (
            f"parity on {self.images} images ({self.image_source}), batch sizes {batch_sizes}, "
            f"onnxruntime {self.onnxruntime} vs torch {torch.__version__}:"
        )
        lines = [header]
        for name in (SCORE_OUTPUT, MAP_OUTPUT):
            lines.append(
                f"  max |diff| {name:<12} {self.max_abs_diff[name]:.3g}  (allowed {self.allowed[name]:.3g})"
            )
        total_images = self.images * len(self.batch_sizes)
        lines.append(
            f"  decisions changed at the calibrated thresholds: {self.image_decision_flips} of {total_images} "
            f"images, {self.pixel_decision_flips} of {self.pixels * len(self.batch_sizes)} pixels"
        )
        return "\n".join(lines)

    def failure(self) -> str:
        """One line saying which output is off and by how much."""
        worst = [
            f"{name} differs by {self.max_abs_diff[name]:.3g} (allowed {self.allowed[name]:.3g}, "
            f"{self.max_abs_diff[name] / self.allowed[name]:.1f}x over)"
            for name in self.allowed
            if self.max_abs_diff[name] > self.allowed[name]
        ]
        return "onnxruntime and torch disagree: " + "; ".join(worst)


def check_onnx(onnx_bytes: bytes, name: str) -> onnx.ModelProto:
    """Parse and run ``onnx.checker`` (full check, with shape inference) on an exported graph."""
    model = onnx.load_from_string(onnx_bytes)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ParityError(f"{name}: the exported graph fails onnx.checker: {error}") from None
    return model


def onnx_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """A CPU onnxruntime session over an in-memory model (the reference provider for parity)."""
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def _torch_outputs(module: torch.nn.Module, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = module(*[torch.from_numpy(array) for array in inputs])
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return [output.detach().cpu().float().numpy() for output in outputs]


def _allowed(reference: np.ndarray, tolerance: float) -> float:
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    return tolerance * max(1.0, scale)


def scoring_parity(
    detector: Detector,
    onnx_bytes: bytes,
    images: np.ndarray,
    image_threshold: float,
    pixel_threshold: float,
    image_source: str,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ParityReport:
    """Compare the fused scoring graph in onnxruntime with ``detector.forward`` on ``images`` [N, C, H, W].

    The torch reference runs once per batch size on the same batches as onnxruntime, so each side sees the
    same batch composition; decisions are the shared :func:`inspector.normalization.is_anomalous` at the raw
    calibrated thresholds (above them is anomalous, as after normalisation).
    """
    if len(images) == 0:
        raise InspectorError("no images to check the export with; pass --parity-images DIR")
    # The same wrapper that was exported, so the torch side returns exactly the exported outputs.
    reference = ScoringGraph(detector).eval()
    session = onnx_session(onnx_bytes)
    by_batch: dict[str, dict[str, float]] = {}
    allowed = {SCORE_OUTPUT: 0.0, MAP_OUTPUT: 0.0}
    worst = {SCORE_OUTPUT: 0.0, MAP_OUTPUT: 0.0}
    image_flips = pixel_flips = 0
    for batch_size in batch_sizes:
        batch_worst = {SCORE_OUTPUT: 0.0, MAP_OUTPUT: 0.0}
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
            torch_score, torch_map = _torch_outputs(reference, [batch])
            onnx_score, onnx_map = session.run([SCORE_OUTPUT, MAP_OUTPUT], {INPUT_NAME: batch})
            if onnx_score.shape != torch_score.shape or onnx_map.shape != torch_map.shape:
                raise ParityError(
                    f"at batch {len(batch)} onnxruntime returns score {list(onnx_score.shape)} and anomaly_map "
                    f"{list(onnx_map.shape)}, torch {list(torch_score.shape)} and {list(torch_map.shape)}"
                )
            for name, ours, theirs in (
                (SCORE_OUTPUT, onnx_score, torch_score),
                (MAP_OUTPUT, onnx_map, torch_map),
            ):
                diff = float(np.abs(ours.astype(np.float64) - theirs).max())
                batch_worst[name] = max(batch_worst[name], diff)
                allowed[name] = max(allowed[name], _allowed(theirs, tolerance))
            image_flips += int(
                np.count_nonzero(
                    is_anomalous(onnx_score, image_threshold) != is_anomalous(torch_score, image_threshold)
                )
            )
            pixel_flips += int(
                np.count_nonzero(
                    is_anomalous(onnx_map, pixel_threshold) != is_anomalous(torch_map, pixel_threshold)
                )
            )
        by_batch[str(batch_size)] = batch_worst
        worst = {name: max(value, batch_worst[name]) for name, value in worst.items()}
    return ParityReport(
        images=len(images),
        image_source=image_source,
        batch_sizes=[int(size) for size in batch_sizes],
        tolerance=float(tolerance),
        allowed=allowed,
        max_abs_diff=worst,
        by_batch_size=by_batch,
        image_decision_flips=image_flips,
        pixel_decision_flips=pixel_flips,
        pixels=int(np.prod(images.shape[-2:])) * len(images),
        image_threshold=float(image_threshold),
        pixel_threshold=float(pixel_threshold),
    )


def component_parity(
    name: str,
    component: Component,
    onnx_bytes: bytes,
    batch_size: int = 2,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, float]:
    """Run a component in onnxruntime on its example inputs and compare with torch; max |diff| per output.

    Components take internal tensors (latents, masks, pairs), so their examples are synthetic; the
    detector's real-image parity is checked on the fused graph.
    """
    session = onnx_session(onnx_bytes)
    inputs = [tensor.detach().cpu().float().numpy() for tensor in component.example_inputs(batch_size)]
    expected = _torch_outputs(component.module.eval(), inputs)
    produced = session.run(component.output_names, dict(zip(component.input_names, inputs)))
    diffs: dict[str, float] = {}
    for output_name, ours, theirs in zip(component.output_names, produced, expected):
        if ours.shape != theirs.shape:
            raise ParityError(
                f"component {name}: output {output_name} is {list(ours.shape)} in onnxruntime, "
                f"{list(theirs.shape)} in torch"
            )
        diffs[output_name] = float(np.abs(ours.astype(np.float64) - theirs).max()) if ours.size else 0.0
        allowed = _allowed(theirs, tolerance)
        if diffs[output_name] > allowed:
            raise ParityError(
                f"component {name}: onnxruntime and torch disagree on {output_name} by "
                f"{diffs[output_name]:.3g} (allowed {allowed:.3g})"
            )
    return diffs


def split_images(
    splits: Splits, input_size: Sequence[int], channels: int, count: int = DEFAULT_IMAGE_COUNT
) -> tuple[np.ndarray, str]:
    """Model input [N, C, H, W] from the run's own data: validation images, plus test anomalies if any.

    Half the images (at most) are anomalous test images, so that pixel decisions near the threshold are
    exercised too; the rest are validation images (the training normals held out), topped up with normal
    test images when validation is small. Returns the batch and a description of where it came from.
    """
    anomalies = [sample for sample in splits.test if sample.label == 1][: count // 2]
    chosen = splits.val[: count - len(anomalies)]
    fill = [sample for sample in splits.test if sample.label == 0][: count - len(anomalies) - len(chosen)]
    selected = chosen + fill + anomalies
    if not selected:
        raise InspectorError("the run's data has no validation or test images; pass --parity-images DIR")
    parts = [f"{len(chosen)} validation"]
    if fill:
        parts.append(f"{len(fill)} normal test")
    if anomalies:
        parts.append(f"{len(anomalies)} anomalous test")
    rgb = [load_rgb(sample) for sample in selected]
    return prepare_batch(rgb, input_size, channels), " + ".join(parts)


def folder_images(
    folder: str | Path, input_size: Sequence[int], channels: int, count: int = DEFAULT_IMAGE_COUNT
) -> tuple[np.ndarray, str]:
    """Model input [N, C, H, W] from the first ``count`` images (sorted by name) of ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InspectorError(f"--parity-images {folder}: not a folder")
    files = [path for _, path in list_images(folder, recursive=True)][:count]
    if not files:
        raise InspectorError(f"--parity-images {folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return prepare_batch(
        [read_image(path) for path in files], input_size, channels
    ), f"{len(files)} from {folder}"
