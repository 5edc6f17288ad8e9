"""Proof that an exported graph computes what the trained torch model computes, at each precision.

``onnx.checker`` first, then onnxruntime against torch (float32, eval mode) on real images of the run's data,
turned into model input by the same :func:`inspector.preprocess.prepare_batch` the runtime uses, at batch 1
and at a batch > 1. Every report counts the image and pixel decisions that change at the calibrated
thresholds. What may differ depends on the precision of the exported graph:

**fp32: the measured float32 reordering noise, not a fixed number.** onnxruntime and torch run the same
float32 arithmetic in a different order (MLAS vs oneDNN kernels, fused vs separate batch norm, other
summation trees), so each lands a few float32 roundings away from the exact result, and how far grows with
the input size and the network's width and depth: a fixed 1e-4 passed at 128x128 and failed two correct
256x256 exports at 1.4e-4 and 1.8e-4. So the check measures that noise on the same images: the torch model
is run once more in float64, and ``noise`` is the largest |torch float32 - torch float64| of each output.
onnxruntime's float32 result is as far from the exact one as torch's, in another direction, so the two
float32 results differ by at most about twice the noise; we allow ``FP32_NOISE_FACTOR`` (8) times it, with
a floor of ``FP32_FLOOR`` (1e-6, a few float32 roundings) times the output's magnitude for graphs whose
noise is near zero. Measured on a trained rdna_cpu model at 256x256: noise 6.8e-6 on the map, onnxruntime
vs torch 1.1e-5, allowed 5.5e-5, while a wrong export (a frozen batch, a missing normalisation, batch norm
in training mode) is off by 1e-2 or more. ``--tolerance X`` replaces the measured allowance by X times the
output's magnitude (at least 1), the rule before this one.

**fp16 and int8: the calibrated range and the decisions.** Reduced precision is a deliberate, larger change,
so it is judged where it matters to a user: how far scores and maps move *relative to the calibrated
normalisation range* (the range that normalised scores and the 0.5 threshold are expressed in), and how
many pixel decisions flip. The score criterion is the largest difference; the map's is its 99.9th
percentile (a few pixels on a steep softmax edge may move further without changing a region). Limits
(:data:`REDUCED_LIMITS`): fp16 2 % of the range, int8 25 %. The range is the calibrated one, or the spread
of the reference outputs on the parity images when that is wider, and at least 1 % of the outputs'
magnitude (a barely trained model whose outputs hardly vary would otherwise be judged on its rounding).
Measured on a trained rdna_cpu model at 256x256 (16 images): fp16 0.65 % (score) and 1.2 % (map), 0.005 %
of pixel decisions changed; int8 13-18 % and 10-13 %, 0.05-0.07 % of pixel decisions changed, no image
decision (README, "Smaller and faster files"). Decisions are reported, not limited: only an image or pixel
within the allowed difference of its threshold can change side, and the share that does is judged over a
whole test set by the benchmark, not by 8 parity images.
"""

from __future__ import annotations

import copy
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

FP32_NOISE_FACTOR = 8.0
FP32_FLOOR = 1e-6
#: Per reduced precision: largest score difference and 99.9th-percentile map difference, as fractions of the
#: calibrated range.
REDUCED_LIMITS: dict[str, dict[str, float]] = {
    "fp16": {"score": 0.02, "anomaly_map": 0.02},
    "int8": {"score": 0.25, "anomaly_map": 0.25},
}
#: The smallest range reduced precisions are judged against, as a fraction of the outputs' magnitude.
SCALE_FLOOR = 0.01
MAP_PERCENTILE = 99.9
DEFAULT_BATCH_SIZES = (1, 4)
DEFAULT_IMAGE_COUNT = 8


class ParityError(Exception):
    """The exported graph differs from the torch model by more than the tolerance (CLI exit code 1)."""


@dataclass
class ParityReport:
    """What the parity check measured; stored in the model's metadata as ``parity``.

    ``max_abs_diff`` holds the largest |onnxruntime - torch| of ``score`` and ``anomaly_map`` over every
    batch size, ``p999_abs_diff`` the 99.9th percentile; ``by_batch_size`` the largest per batch size;
    ``allowed`` what the precision's rule allows (see the module docstring; ``rule`` says it in words) for
    the statistic named in ``criteria``; ``noise`` the measured float32 reordering noise (fp32) and
    ``scale`` the calibrated range the reduced precisions are judged against.
    ``image_decision_flips`` / ``pixel_decision_flips`` count images / pixels whose side of the calibrated
    threshold differs between the two (out of ``images`` x batch sizes and ``pixels`` x batch sizes).
    """

    images: int
    image_source: str
    batch_sizes: list[int]
    precision: str
    rule: str
    criteria: dict[str, str]
    allowed: dict[str, float]
    max_abs_diff: dict[str, float]
    p999_abs_diff: dict[str, float]
    by_batch_size: dict[str, dict[str, float]]
    image_decision_flips: int
    pixel_decision_flips: int
    pixels: int
    image_threshold: float
    pixel_threshold: float
    noise: dict[str, float] | None = None
    scale: dict[str, float] | None = None
    onnxruntime: str = ort.__version__
    provider: str = "CPUExecutionProvider"
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = not self._over()

    def _measured(self, name: str) -> float:
        return self.p999_abs_diff[name] if self.criteria[name] == "p99.9" else self.max_abs_diff[name]

    def _over(self) -> list[str]:
        return [name for name in self.allowed if self._measured(name) > self.allowed[name]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        batch_sizes = ", ".join(map(str, self.batch_sizes))
        header = (
            f"parity of the {self.precision} graph on {self.images} images ({self.image_source}), batch sizes "
            f"{batch_sizes}, onnxruntime {self.onnxruntime} vs torch {torch.__version__} float32:"
        )
        lines = [header]
        for name in (SCORE_OUTPUT, MAP_OUTPUT):
            percentile = self.criteria[name] == "p99.9"
            lines.append(
                f"  {'p99.9' if percentile else 'max'} |diff| {name:<12} {self._measured(name):.3g}  "
                f"(allowed {self.allowed[name]:.3g}"
                + (f"; max {self.max_abs_diff[name]:.3g})" if percentile else ")")
            )
        lines.append(f"  allowed: {self.rule}")
        total_images, total_pixels = self.images * len(self.batch_sizes), self.pixels * len(self.batch_sizes)
        lines.append(
            f"  decisions changed at the calibrated thresholds: {self.image_decision_flips} of {total_images} "
            f"images, {self.pixel_decision_flips} of {total_pixels} pixels"
        )
        return "\n".join(lines)

    def failure(self) -> str:
        """One line saying which output is off and by how much."""
        worst = [
            f"{name} differs by {self._measured(name):.3g} (allowed {self.allowed[name]:.3g}, "
            f"{self._measured(name) / self.allowed[name]:.1f}x over)"
            for name in self._over()
        ]
        return f"onnxruntime ({self.precision}) and torch disagree: " + "; ".join(worst)


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


def reordering_noise(
    module: torch.nn.Module, inputs: Sequence[np.ndarray], batch_size: int = max(DEFAULT_BATCH_SIZES)
) -> list[float]:
    """Largest |float32 - float64| of each output of ``module`` on ``inputs``: float32's rounding noise.

    The module is copied to float64 (weights and buffers) and run on the same batches; returns one number per
    output. A module that cannot run in float64 (a float32 constant made inside ``forward``) raises
    :class:`ParityError` naming it, so it is fixed rather than judged by a guess.
    """
    exact = copy.deepcopy(module).double().eval()
    worst: list[float] = []
    count = len(inputs[0])
    for start in range(0, count, batch_size):
        batch = [np.ascontiguousarray(array[start : start + batch_size]) for array in inputs]
        single = _torch_outputs(module, [array.astype(np.float32) for array in batch])
        try:
            with torch.no_grad():
                outputs = exact(*[torch.from_numpy(array.astype(np.float64)) for array in batch])
        except RuntimeError as error:
            raise ParityError(
                f"{type(module).__name__} cannot run in float64 to measure float32 noise ({error}); "
                "pass --tolerance to use a fixed allowance"
            ) from None
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else outputs
        for index, (ours, theirs) in enumerate(zip(single, outputs)):
            # ScoringGraph casts its outputs to float32; the cast's rounding is far below the noise.
            diff = (
                float(np.abs(ours.astype(np.float64) - theirs.double().numpy()).max()) if ours.size else 0.0
            )
            if index == len(worst):
                worst.append(diff)
            else:
                worst[index] = max(worst[index], diff)
    return worst


def _spread(values: np.ndarray) -> float:
    return float(values.max() - values.min()) if values.size else 0.0


def scoring_parity(
    detector: Detector,
    onnx_bytes: bytes,
    images: np.ndarray,
    image_threshold: float,
    pixel_threshold: float,
    image_source: str,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    tolerance: float | None = None,
    precision: str = "fp32",
    normalization: dict[str, Sequence[float]] | None = None,
    noise: dict[str, float] | None = None,
    torch_cache: dict[tuple[int, int], list[np.ndarray]] | None = None,
) -> ParityReport:
    """Compare the scoring graph in onnxruntime with ``detector.forward`` (float32) on ``images`` [N, C, H, W].

    The torch reference runs once per batch size on the same batches as onnxruntime, so each side sees the
    same batch composition; decisions are the shared :func:`inspector.normalization.is_anomalous` at the raw
    calibrated thresholds (above them is anomalous, as after normalisation). ``precision`` picks the rule
    (module docstring): fp32 measures the float32 noise (or takes ``noise`` measured before, or a fixed
    ``tolerance``); fp16 and int8 judge against ``normalization`` ({"image": [min, max], "pixel": ...}).
    ``torch_cache`` (a dict, filled on the first call) keeps torch's outputs for a second check of another
    graph on the same images.
    """
    if len(images) == 0:
        raise InspectorError("no images to check the export with; pass --parity-images DIR")
    # The same wrapper that was exported, so the torch side returns exactly the exported outputs.
    reference = ScoringGraph(detector).eval()
    session = onnx_session(onnx_bytes)
    names = (SCORE_OUTPUT, MAP_OUTPUT)
    by_batch: dict[str, dict[str, float]] = {}
    magnitude = dict.fromkeys(names, 0.0)
    worst = dict.fromkeys(names, 0.0)
    diffs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    references: dict[str, list[np.ndarray]] = {name: [] for name in names}
    image_flips = pixel_flips = 0
    for batch_size in batch_sizes:
        batch_worst = dict.fromkeys(names, 0.0)
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
            key = (batch_size, start)
            if torch_cache is not None and key in torch_cache:
                torch_score, torch_map = torch_cache[key]
            else:
                torch_score, torch_map = _torch_outputs(reference, [batch])
                if torch_cache is not None:
                    torch_cache[key] = [torch_score, torch_map]
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
                diff = np.abs(ours.astype(np.float64) - theirs).ravel()
                diffs[name].append(diff)
                references[name].append(theirs.ravel())
                batch_worst[name] = max(batch_worst[name], float(diff.max()) if diff.size else 0.0)
                magnitude[name] = max(magnitude[name], float(np.abs(theirs).max()) if theirs.size else 0.0)
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
    p999 = {name: float(np.percentile(np.concatenate(diffs[name]), MAP_PERCENTILE)) for name in names}
    spreads = {name: _spread(np.concatenate(references[name])) for name in names}
    extra: dict[str, Any] = {}
    if precision == "fp32":
        criteria = dict.fromkeys(names, "max")
        if tolerance is not None:
            allowed = {name: tolerance * max(1.0, magnitude[name]) for name in names}
            rule = f"fixed: {tolerance:g} x max(1, |output|) (--tolerance)"
        else:
            if noise is None:
                measured = reordering_noise(reference, [np.asarray(images, dtype=np.float32)])
                noise = dict(zip(names, measured))
            allowed = {
                name: max(FP32_NOISE_FACTOR * noise[name], FP32_FLOOR * max(1.0, magnitude[name]))
                for name in names
            }
            rule = (
                f"{FP32_NOISE_FACTOR:g} x the measured float32 noise (torch float32 vs float64: score "
                f"{noise[SCORE_OUTPUT]:.3g}, anomaly_map {noise[MAP_OUTPUT]:.3g}), at least "
                f"{FP32_FLOOR:g} x max(1, |output|)"
            )
            extra["noise"] = {name: float(value) for name, value in noise.items()}
    elif precision in REDUCED_LIMITS:
        limits = REDUCED_LIMITS[precision]
        ranges = normalization or {}
        calibrated = {
            SCORE_OUTPUT: _spread(np.asarray(ranges.get("image", [0.0, 0.0]), dtype=np.float64)),
            MAP_OUTPUT: _spread(np.asarray(ranges.get("pixel", [0.0, 0.0]), dtype=np.float64)),
        }
        # The calibrated range; the spread seen on the parity images when that is wider; at least 1 % of the
        # outputs' magnitude (an uncalibrated or barely trained model whose outputs hardly vary).
        scale = {
            name: max(calibrated[name], spreads[name], SCALE_FLOOR * magnitude[name], 1e-12) for name in names
        }
        criteria = {SCORE_OUTPUT: "max", MAP_OUTPUT: "p99.9"}
        allowed = {name: limits[name] * scale[name] for name in names}
        rule = (
            f"{precision}: score max {limits['score']:.0%} and map p99.9 {limits['anomaly_map']:.0%} of the "
            f"calibrated range (score {scale[SCORE_OUTPUT]:.3g}, map {scale[MAP_OUTPUT]:.3g})"
        )
        extra["scale"] = scale
    else:
        raise InspectorError(f"unknown precision {precision!r}; choose fp32, fp16 or int8")
    return ParityReport(
        images=len(images),
        image_source=image_source,
        batch_sizes=[int(size) for size in batch_sizes],
        precision=precision,
        rule=rule,
        criteria=criteria,
        allowed=allowed,
        max_abs_diff=worst,
        p999_abs_diff=p999,
        by_batch_size=by_batch,
        image_decision_flips=image_flips,
        pixel_decision_flips=pixel_flips,
        pixels=int(np.prod(images.shape[-2:])) * len(images),
        image_threshold=float(image_threshold),
        pixel_threshold=float(pixel_threshold),
        **extra,
    )


def component_parity(
    name: str,
    component: Component,
    onnx_bytes: bytes,
    batch_size: int = 2,
    tolerance: float | None = None,
) -> dict[str, float]:
    """Run a component in onnxruntime on its example inputs and compare with torch; max |diff| per output.

    Components take internal tensors (latents, masks, pairs), so their examples are synthetic; the
    detector's real-image parity is checked on the fused graph. Allowed: as for the fp32 scoring graph, 8x
    the measured float32 noise (``tolerance`` None) or ``tolerance`` x max(1, |output|).
    """
    session = onnx_session(onnx_bytes)
    inputs = [tensor.detach().cpu().float().numpy() for tensor in component.example_inputs(batch_size)]
    expected = _torch_outputs(component.module.eval(), inputs)
    produced = session.run(component.output_names, dict(zip(component.input_names, inputs)))
    noise = reordering_noise(component.module.eval(), inputs) if tolerance is None else None
    diffs: dict[str, float] = {}
    for index, (output_name, ours, theirs) in enumerate(zip(component.output_names, produced, expected)):
        if ours.shape != theirs.shape:
            raise ParityError(
                f"component {name}: output {output_name} is {list(ours.shape)} in onnxruntime, "
                f"{list(theirs.shape)} in torch"
            )
        diffs[output_name] = float(np.abs(ours.astype(np.float64) - theirs).max()) if ours.size else 0.0
        if noise is None:
            allowed = _allowed(theirs, tolerance)
        else:
            allowed = max(FP32_NOISE_FACTOR * noise[index], _allowed(theirs, FP32_FLOOR))
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
