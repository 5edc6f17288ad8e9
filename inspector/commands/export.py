"""``inspector export RUN_DIR``: write the run's model as one checked, self-describing ONNX file."""

from __future__ import annotations

import click

from inspector.exit_codes import EXIT_CHECK_FAILED


def _log(line: str) -> None:
    click.echo(line, err=line.startswith("warning:"))


@click.command("export", short_help="Export a trained run to a checked, self-describing ONNX model.")
@click.argument("run_dir", type=click.Path(path_type=str))
@click.option(
    "--onnx",
    "to_onnx",
    is_flag=True,
    help="Export to ONNX: the only format and the default, so this flag changes nothing (scripts may name it).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Folder for model.onnx and components/ (default: RUN_DIR/export).",
)
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset version (13 or newer).")
@click.option(
    "--no-components", is_flag=True, help="Write only model.onnx, not the encoder/generator/... graphs."
)
@click.option(
    "--checkpoint",
    type=click.Choice(["best", "last"]),
    default="best",
    show_default=True,
    help="Which checkpoint of the run to export.",
)
@click.option(
    "--allow-uncalibrated",
    is_flag=True,
    help="Export a run that has no calibration.json (metadata calibration: none, with a warning).",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing model.onnx (and its components) in the output folder."
)
@click.option(
    "--tolerance",
    type=float,
    default=None,
    help="A fixed largest |onnxruntime - torch| of the fp32 graph, relative to each output's scale (at "
    "least 1). Default: 8x the float32 noise measured against torch in float64 on the same images.",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="Write model-int8.onnx instead of model.onnx: static int8 (QDQ, per-channel weights) calibrated on the run's "
    "normal training images, checked against torch with the int8 limits.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="fp16 writes model-fp16.onnx (float16 inside, float32 input and outputs; for GPU providers), "
    "checked against torch with the fp16 limits.",
)
@click.option(
    "--no-simplify",
    is_flag=True,
    help="Keep the graph as traced (by default onnxslim folds shape arithmetic and batch norm first).",
)
@click.option(
    "--calibration-images",
    type=click.Path(path_type=str),
    default=None,
    help="Folder of normal images to calibrate --quantize int8 on, when the run's data is not on this machine.",
)
@click.option(
    "--parity-images",
    type=click.Path(path_type=str),
    default=None,
    help="Folder of images for the parity check, when the run's own data is not on this machine.",
)
@click.option(
    "--tile",
    is_flag=True,
    help="For a run trained on crops (crop_size): export a graph of one crop that scores any image resized "
    "to the run's input_size in overlapping tiles, recalibrated on tiled scores (draem, rdna).",
)
def export_command(
    run_dir: str,
    to_onnx: bool,
    out_dir: str | None,
    opset: int,
    no_components: bool,
    checkpoint: str,
    allow_uncalibrated: bool,
    force: bool,
    tolerance: float | None,
    quantize: str | None,
    precision: str,
    no_simplify: bool,
    calibration_images: str | None,
    parity_images: str | None,
    tile: bool,
) -> None:
    """Export a trained run to ONNX: model.onnx (image -> raw score and anomaly map, dynamic batch) with the
    calibration inside, plus components/, after checking it against torch on the run's validation images.

    --quantize int8 writes model-int8.onnx and --precision fp16 model-fp16.onnx instead, each checked
    against torch with its own limits (the fp32 graph is checked first). Every export is simplified with
    onnxslim and records parameters and GFLOP (onnx-tool) in the metadata, shown by `inspector info`.

    Exit code 1 when onnxruntime and torch disagree beyond what the precision allows (nothing is written);
    2 on bad input.

    Example: inspector export runs/demo-rdna
    """
    from inspector.errors import InspectorError
    from inspector.export.parity import ParityError
    from inspector.export.pipeline import export_run

    if quantize and precision != "fp32":
        raise InspectorError(
            f"--quantize {quantize} and --precision {precision} exclude each other; pick one"
        )
    if calibration_images and not quantize:
        raise InspectorError("--calibration-images is for --quantize int8; add it or leave the folder out")

    try:
        export_run(
            run_dir,
            out_dir=out_dir,
            opset=opset,
            components=not no_components,
            checkpoint=checkpoint,
            allow_uncalibrated=allow_uncalibrated,
            force=force,
            tolerance=tolerance,
            parity_images=parity_images,
            precision=quantize or precision,
            simplify=not no_simplify,
            calibration_images=calibration_images,
            log=_log,
            tile=tile,
        )
    except ParityError as error:
        click.echo(f"error: export failed its check: {error}", err=True)
        raise SystemExit(EXIT_CHECK_FAILED) from None
