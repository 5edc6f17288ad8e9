"""``inspector demo``: the whole pipeline on built-in data, for a user with no data of their own."""

from __future__ import annotations

from pathlib import Path

import click

from inspector.commands.options import max_steps_option, time_limit_option, torch_device_option

#: The demo's step budget: about 3 minutes of the CPU preset on 2 idle cores. The demo has no time limit
#: unless one is given: beside one other CPU-bound job, 400 steps took more than the preset's 10 minutes
#: (torch's threads wait on each other on shared cores), which cut the model the demo shows; README,
#: "Detection quality on real surfaces".
DEMO_STEPS = 400


@click.command("demo", short_help="Generate data, train, evaluate, export and inspect, in one go.")
@click.option(
    "--detector",
    type=click.Choice(["rdna", "draem"]),
    default="rdna",
    show_default=True,
    help="Detector to train (its CPU preset, <detector>_cpu).",
)
@click.option(
    "--category",
    default="fabric",
    show_default=True,
    help="Built-in surface category: fabric, metal, wood or granite.",
)
@click.option(
    "--data",
    "data_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/synthetic"),
    show_default=True,
    help="Where the built-in dataset is generated (reused when it is already there).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Folder for the run directory (<out>/demo-<detector>).",
)
@time_limit_option
@click.option(
    "--minutes",
    "old_minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    hidden=True,
    help="The earlier name of --time-limit.",
)
@max_steps_option
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@torch_device_option
def demo_command(
    detector: str,
    category: str,
    data_root: Path,
    out: Path,
    time_limit: float | None,
    old_minutes: float | None,
    max_steps: int | None,
    seed: int,
    device: str | None,
) -> None:
    """Run train -> evaluate -> export -> inspect on the built-in textured-surface dataset.

    Generates a small MVTec-style dataset (good surfaces to train on, defects with masks to test on),
    trains the detector's CPU preset, evaluates and calibrates it, exports model.onnx with the calibration
    inside, and inspects the test images with the exported model: the heatmap overlays land in
    <run>/inspection/overlays.

    \b
    Example:
      inspector demo --time-limit 3
    """
    from inspector.config import load_config
    from inspector.export.pipeline import export_run
    from inspector.runtime.folder import inspect_folder
    from inspector.runtime.scoring import Scorer
    from inspector.runtime.session import load_model, threads_per_worker
    from inspector.training.trainer import train

    config = load_config(
        f"{detector}_cpu",
        {
            "name": f"demo-{detector}",
            "out": str(out),
            "seed": seed,
            "device": device,
            "max_steps": max_steps or DEMO_STEPS,
            "data.format": "synthetic",
            "data.root": str(data_root),
            "data.category": category,
        },
    )
    config.time_limit_minutes = time_limit if time_limit is not None else old_minutes  # None: steps bind

    click.secho("1/3 train and evaluate", bold=True)
    run_dir = train(config)  # prints the test metrics when it has evaluated the run

    click.secho("2/3 export", bold=True)
    model_path = export_run(run_dir, log=click.echo).model_path

    click.secho("3/3 inspect the test images with the exported model", bold=True)
    workers, threads = threads_per_worker(0)  # as `inspector inspect` does by default
    scorer = Scorer(load_model(model_path, "cpu", threads=threads))
    inspection_dir = run_dir / "inspection"
    test_dir = data_root / category / "test"
    summary = inspect_folder(test_dir, scorer, inspection_dir, recursive=True, force=True, workers=workers)
    click.echo(
        f"{summary['scored']} images scored, {summary['anomalous']} flagged anomalous "
        f"({summary['this_run']['images_per_second']:.1f} images/s)"
    )
    click.secho("done", bold=True)
    click.echo(f"run directory: {run_dir}")
    click.echo(f"model:         {model_path}")
    click.echo(f"heatmaps:      {inspection_dir / 'overlays'}")
    click.echo(f"report:        {inspection_dir / 'report.csv'}")
    click.echo(f"next: inspector inspect YOUR_FOLDER --model {model_path}")
