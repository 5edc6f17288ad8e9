"""Options shared by several commands, so that every command speaks one vocabulary."""

from __future__ import annotations

import click

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
torch_device_option = click.option(
    "--device",
    type=click.Choice(DEVICES_TORCH),
    default=None,
    help="Torch device for training and evaluation (default: the config's, normally auto).",
)
