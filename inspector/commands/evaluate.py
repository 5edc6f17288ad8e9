"""``inspector eval RUN_DIR``: calibrate a trained run on its validation split and measure it on its test split."""

from __future__ import annotations

import click

from inspector.commands.options import data_format_option, torch_device_option


def _log(line: str) -> None:
    click.echo(line, err=line.startswith("warning:"))


@click.command("eval", short_help="Calibrate a trained run and measure it on its test images.")
@click.argument("run_dir", type=click.Path(path_type=str))
@click.option(
    "--data",
    "data_root",
    type=click.Path(path_type=str),
    default=None,
    help="Dataset folder to use instead of the run's own (data.root), e.g. after moving the data.",
)
@data_format_option
@click.option("--category", default=None, help="Category inside --data (MVTec or built-in).")
@click.option(
    "--checkpoint",
    type=click.Choice(["best", "last"]),
    default="best",
    show_default=True,
    help="Which checkpoint of the run to evaluate.",
)
@torch_device_option
@click.option("--no-plots", is_flag=True, help="Skip plots/ (metrics and calibration only).")
def eval_command(
    run_dir: str,
    data_root: str | None,
    data_format: str | None,
    category: str | None,
    checkpoint: str,
    device: str | None,
    no_plots: bool,
) -> None:
    """Score the run's validation images to calibrate the image and pixel thresholds (calibration.json),
    then its test images for image AUROC / AP / F1 and, with defect masks, pixel AUROC / AP, AUPRO and F1
    (metrics.json), and draw plots/.

    Example: inspector eval runs/rdna_cpu
    """
    from inspector.training.evaluate import evaluate_run

    overrides = {"root": data_root, "format": data_format, "category": category}
    evaluate_run(
        run_dir,
        data_overrides={key: value for key, value in overrides.items() if value is not None},
        checkpoint=checkpoint,
        device=device,
        plots=not no_plots,
        log=_log,
    )
