"""Options shared by several commands, so that every command speaks one vocabulary.

Each shared option is defined once here with its one meaning; docs/architecture.md, section 5, lists them.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from inspector.config import DATA_FORMATS
from inspector.runtime import SAVE_CHOICES

DEVICES_RUNTIME = ("auto", "cpu", "cuda", "tensorrt", "coreml", "directml", "openvino")
DEVICES_TORCH = ("auto", "cpu", "cuda", "mps")

model_option = click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Exported model file (model.onnx written by `inspector export`).",
)
runtime_device_option = click.option(
    "--device",
    type=click.Choice(DEVICES_RUNTIME),
    default="auto",
    show_default=True,
    help="Where to compute (onnxruntime execution provider): auto prefers CUDA, then CoreML, DirectML, "
    "OpenVINO, then the CPU; a missing one falls back to the CPU with a warning.",
)


def echo_warning(message: str) -> None:
    """How every command prints a warning: one line on stderr (e.g. a provider falling back to the CPU)."""
    click.echo(f"warning: {message}", err=True)


data_format_option = click.option(
    "--format",
    "data_format",
    type=click.Choice(DATA_FORMATS),
    default=None,
    help="Dataset layout (data.format).",
)
torch_device_option = click.option(
    "--device",
    type=click.Choice(DEVICES_TORCH),
    default=None,
    help="Torch device for training and evaluation (default: the config's, normally auto).",
)

# Options of the runtime commands (inspect, watch, bench).
strict_device_option = click.option(
    "--strict-device",
    is_flag=True,
    help="Fail (exit 2) instead of falling back to the CPU when the requested --device is unavailable.",
)


threads_option = click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="onnxruntime threads per model call; 0 = the physical cores divided among the model calls that "
    "run side by side (--workers; watch runs one call at a time, so all of them).",
)
threshold_option = click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Image threshold on the normalised score in [0, 1]: 0.5 is the model's calibrated threshold, "
    "higher flags fewer images, lower flags more. Raw scores are reported too.",
)
pixel_threshold_option = click.option(
    "--pixel-threshold",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Pixel threshold on the normalised anomaly map in [0, 1] (0.5 = calibrated): sets the defect "
    "mask, the regions and the contours.",
)
batch_size_option = click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per model call."
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Model calls side by side: threads that each take a batch from decoding to overlay; "
    "0 = one per physical core.",
)


max_megapixels_option = click.option(
    "--max-megapixels",
    type=click.FloatRange(min=0, min_open=True),
    default=100.0,
    show_default=True,
    help="Images whose header declares more pixels than this are reported unreadable without being "
    "decoded (a tiny file can declare gigapixels).",
)


def megapixels_to_pixels(megapixels: float) -> int:
    """``--max-megapixels`` as a pixel count."""
    return max(1, int(megapixels * 1_000_000))


def save_option(default: str, where: str = "OUT/overlays/") -> Callable[[Callable], Callable]:
    """``--save all|anomalous|none``: which heatmap overlays are written (``inspect``, ``watch``, ``bench``)."""
    return click.option(
        "--save",
        type=click.Choice(SAVE_CHOICES),
        default=default,
        show_default=True,
        help=f"Which heatmap overlays to write to {where}: every image's (or frame's), the anomalous "
        "ones' only, or none.",
    )


progress_option = click.option(
    "--no-progress",
    "--quiet",
    "-q",
    "no_progress",
    is_flag=True,
    help="No progress bar (what happens is still printed).",
)
time_limit_option = click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop training cleanly after this many minutes, then evaluate (default: train: the preset's, 10 for "
    "the CPU presets; demo: none, its steps bind, so a busy machine gives the same model, later).",
)
max_steps_option = click.option(
    "--max-steps", type=click.IntRange(min=1), default=None, help="Stop training after this many steps."
)
