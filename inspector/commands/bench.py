"""`inspector bench`: model-only versus end-to-end inspection throughput on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import click

from inspector.commands.options import (
    batch_size_option,
    echo_warning,
    model_option,
    runtime_device_option,
    save_option,
    strict_device_option,
    threads_option,
    workers_option,
)


@click.command("bench", short_help="Measure model-only and end-to-end inspection throughput.")
@model_option
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of images to measure on, searched recursively [default: generated textured images at the "
    "model's size].",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="How many images to generate when no --images folder is given.",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Alternating model-only / end-to-end measurements; medians are reported.",
)
@batch_size_option
@workers_option
@save_option("all", where="a temporary folder in the end-to-end runs")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the full result (every repeat) as one JSON object."
)
@runtime_device_option
@strict_device_option
@threads_option
def bench_command(
    model_path: str,
    images: Path | None,
    count: int,
    repeats: int,
    batch_size: int,
    workers: int,
    save: str,
    as_json: bool,
    device: str,
    strict_device: bool,
    threads: int,
) -> None:
    """Measure a model's own throughput in onnxruntime and the end-to-end `inspect` throughput (decode,
    preprocess, inference, regions, overlays, reports) on the same images, in one run, and their ratio.
    Both use the same workers and threads; onnxruntime's defaults (one call at a time on all cores) are
    measured too, with the end-to-end ratio to them.

    \b
    Example:
      inspector bench --model model.onnx --images photos/
    """
    from inspector.runtime.bench import benchmark
    from inspector.runtime.scoring import Scorer
    from inspector.runtime.session import load_model, threads_per_worker

    def open_model(threads: int) -> Scorer:
        return Scorer(load_model(model_path, device, strict_device, threads, warn=echo_warning))

    workers, threads = threads_per_worker(workers, threads)
    result = benchmark(
        open_model(threads),
        images=images,
        count=count,
        repeats=repeats,
        batch_size=batch_size,
        workers=workers,
        save=save,
        single_call=open_model(0) if workers > 1 else None,
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"model: {result['model']} on {', '.join(result['providers'])}, {result['images']} images, "
        f"batch {batch_size}, {workers} worker(s) x {result['threads_per_call']} thread(s), "
        f"{repeats} repeats (medians)"
    )
    click.echo(f"model only (onnxruntime), same layout: {result['model_only_median']:8.1f} images/s")
    click.echo(f"end to end (inspect):                  {result['end_to_end_median']:8.1f} images/s")
    click.echo(f"ratio:                                 {result['ratio']:8.0%}")
    click.echo(
        f"CPU per image: model {result['model_only_cpu_ms_per_image']:.1f} ms, end to end "
        f"{result['end_to_end_cpu_ms_per_image']:.1f} ms (ratio {result['cpu_ratio']:.0%})"
    )
    if "single_call_median" in result:
        click.echo(
            f"model only, onnxruntime defaults (one call at a time, {result['single_call_threads'] or 'all'} "
            f"threads): {result['single_call_median']:.1f} images/s; end to end / that: "
            f"{result['single_call_ratio']:.0%}"
        )
