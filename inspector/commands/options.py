"""Options shared by several commands, so that every command speaks one vocabulary."""

from __future__ import annotations

from collections.abc import Callable

import click

from inspector.config import DATA_FORMATS

DEVICES_RUNTIME = ("auto", "cpu", "cuda", "coreml", "tensorrt", "openvino")
DEVICES_TORCH = ("auto", "cpu", "cuda", "mps")

model_option = click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Exported model file (model.onnx written by `inspector export --onnx`).",
)
runtime_device_option = click.option(
    "--device",
    type=click.Choice(DEVICES_RUNTIME),
    default="auto",
    show_default=True,
    help="Execution provider: auto prefers CUDA, then CoreML, then CPU; a missing one falls back to the CPU "
    "with a warning.",
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


def _threads_option(meaning_of_zero: str) -> Callable[[Callable], Callable]:
    return click.option(
        "--threads",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help=f"onnxruntime intra-op threads of each model call; 0 = {meaning_of_zero}.",
    )


threads_option = _threads_option("one per physical core available to this process")
throughput_threads_option = _threads_option(
    "the cores divided among the --workers (1 with the default workers: calls side by side beat one call "
    "split across cores)"
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
    help="Batches processed side by side, each on its own thread from decoding to overlay; "
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


def _save_option(where: str) -> Callable[[Callable], Callable]:
    return click.option(
        "--save",
        type=click.Choice(("all", "anomalous", "none")),
        default="all",
        show_default=True,
        help=f"Which heatmap overlays to write {where}: every image's, the anomalous images' only, or none.",
    )


save_option = _save_option("to OUT/overlays/")
bench_save_option = _save_option("in the end-to-end runs")
