"""``inspector train``: train a detector from a config file, with command-line overrides; then evaluate it."""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.core import ParameterSource

from inspector.commands.options import (
    data_format_option,
    max_steps_option,
    progress_option,
    time_limit_option,
    torch_device_option,
)
from inspector.config import load_config, preset_names
from inspector.errors import InspectorError
from inspector.exit_codes import exit_code_for_signal
from inspector.io import check_writable_folder

#: ``--resume`` given without a run directory: resume ``<out>/<name>`` of the config.
RESUME_FROM_CONFIG = "\0config"
#: The config key each option overrides, and so the option that names a key in messages.
OPTION_OF_KEY = {
    "detector": "--detector",
    "data.root": "--data",
    "data.format": "--format",
    "data.category": "--category",
    "data.normal_class": "--normal-class",
    "data.normal_dir": "--normal-dir",
    "data.abnormal_dir": "--abnormal-dir",
    "data.mask_dir": "--mask-dir",
    "data.normal_test_dir": "--normal-test-dir",
    "data.anomaly_source": "--anomaly-source",
    "data.workers": "--loader-workers",
    "out": "--out",
    "name": "--name",
    "epochs": "--epochs",
    "max_steps": "--max-steps",
    "time_limit_minutes": "--time-limit",
    "batch_size": "--batch-size",
    "input_size": "--input-size",
    "device": "--device",
    "seed": "--seed",
}
#: The ``--format folder`` keys, each with its own option.
FOLDER_KEYS = ("data.normal_dir", "data.abnormal_dir", "data.mask_dir", "data.normal_test_dir")
#: What a resumed run may change; everything else is fixed by the run's own config.yaml.
RESUMABLE = (
    "epochs",
    "max_steps",
    "time_limit_minutes",
    "device",
    "data.root",
    "data.anomaly_source",
    "data.workers",
)


def _log(line: str) -> None:
    click.echo(line, err=line.startswith("warning:"))


def _input_size(value: str | None) -> list[int] | None:
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        size = [int(part) for part in parts]
    except ValueError:
        size = []
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 8:
        raise InspectorError(
            f"--input-size {value}: give SIZE or HEIGHTxWIDTH, each at least 8 (e.g. 128 or 128x160)"
        )
    return size


@click.command("train", short_help="Train a detector on images of good parts, then evaluate it.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="YAML config file, or the name of an installed preset (rdna_cpu, draem_cpu, rdna_paper, "
    "alocc_fmnist, ...; `inspector train --config list` lists them); options below override it. "
    "Default: the detector's CPU preset (<detector>_cpu) where one exists, else built-in defaults.",
)
@click.option("--detector", default=None, help="Detector name: rdna, draem, alocc, bigan, memvae, advvae.")
@click.option(
    "--data",
    "data_root",
    type=click.Path(path_type=str),
    default=None,
    help="Dataset folder (data.root): the folder holding the MVTec categories, the built-in data's folder, "
    "or the base of relative folder paths.",
)
@data_format_option
@click.option(
    "--category", default=None, help="Category inside --data (MVTec or built-in), e.g. bottle or fabric."
)
@click.option(
    "--normal-dir",
    type=click.Path(path_type=str),
    default=None,
    help="--format folder: folder of normal (good) training images (data.normal_dir; relative to --data "
    "when given). Implies --format folder.",
)
@click.option(
    "--abnormal-dir",
    type=click.Path(path_type=str),
    default=None,
    help="--format folder: folder of anomalous test images, sub-folders naming defect kinds "
    "(data.abnormal_dir).",
)
@click.option(
    "--mask-dir",
    type=click.Path(path_type=str),
    default=None,
    help="--format folder: defect masks of the --abnormal-dir images, <image stem>.png or "
    "<image stem>_mask.png (data.mask_dir).",
)
@click.option(
    "--normal-test-dir",
    type=click.Path(path_type=str),
    default=None,
    help="--format folder: folder of normal test images (data.normal_test_dir).",
)
@click.option(
    "--normal-class",
    type=int,
    default=None,
    help="The normal class of a one-class dataset (mnist, cifar10...).",
)
@click.option(
    "--anomaly-source",
    type=click.Path(path_type=str),
    default=None,
    help="Folder of texture images for synthetic anomalies (e.g. DTD's images/); default: generated textures.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Folder of runs (default runs).",
)
@click.option(
    "--name", default=None, help="Run name: the run is written to OUT/NAME (NAME-2... if it exists)."
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Number of passes over the training images."
)
@max_steps_option
@time_limit_option
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per optimisation step.")
@click.option(
    "--input-size", default=None, help="Model input size: SIZE or HEIGHTxWIDTH (e.g. 128 or 128x160)."
)
@torch_device_option
@click.option(
    "--seed", type=int, default=None, help="Random seed (data split, weights, synthetic anomalies)."
)
@click.option(
    "--loader-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Data-loader worker processes that read and synthesise training images (data.workers; "
    "0: in the training process).",
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value=RESUME_FROM_CONFIG,
    default=None,
    metavar="[RUN_DIR]",
    help="Continue an interrupted run from its last.pt (same step, optimizer state and schedule): "
    "--resume runs/NAME, or --resume alone for OUT/NAME of the config. Only --epochs, --max-steps, "
    "--time-limit, --device, --data, --anomaly-source and --loader-workers may change.",
)
@click.option(
    "--devices",
    type=click.IntRange(min=1),
    default=None,
    help="Train with N processes on this machine (DistributedDataParallel-style, launched through torchrun): "
    "one per GPU with CUDA, else N CPU processes (gloo). --batch-size is the total over the processes. "
    "For several machines run `torchrun ... -m inspector train` on each instead.",
)
@click.option(
    "--backend",
    type=click.Choice(("auto", "gloo", "nccl")),
    default="auto",
    show_default=True,
    help="torch.distributed backend of a run on several processes (--devices or torchrun): auto = nccl "
    "on CUDA GPUs, gloo on the CPU.",
)
@progress_option
@click.option(
    "--no-eval",
    is_flag=True,
    help="Skip calibration and evaluation after training (run `inspector eval RUN_DIR` later).",
)
def train_command(
    config_path: str | None,
    detector: str | None,
    data_root: str | None,
    data_format: str | None,
    category: str | None,
    normal_dir: str | None,
    abnormal_dir: str | None,
    mask_dir: str | None,
    normal_test_dir: str | None,
    normal_class: int | None,
    anomaly_source: str | None,
    out: str | None,
    name: str | None,
    epochs: int | None,
    max_steps: int | None,
    time_limit: float | None,
    batch_size: int | None,
    input_size: str | None,
    device: str | None,
    seed: int | None,
    loader_workers: int | None,
    resume: str | None,
    devices: int | None,
    backend: str,
    no_progress: bool,
    no_eval: bool,
) -> None:
    """Train a detector on normal images, save checkpoints as it goes, then calibrate and evaluate it.

    Writes OUT/NAME/: config.yaml, checkpoints/last.pt and best.pt, history.csv, metrics.json,
    calibration.json and plots/. Ctrl-C (or SIGTERM) saves last.pt and exits with code 130 (143); continue with --resume.

    \b
    Examples:
      inspector train --config rdna_cpu
      inspector train --config draem_cpu --format mvtec --data mvtec_ad \\
          --category bottle --anomaly-source dtd/images
      inspector train --normal-dir good/ --abnormal-dir defects/ --mask-dir masks/
      inspector train --resume runs/rdna_cpu
      inspector train --config rdna_cpu --devices 2
      torchrun --nproc-per-node 4 -m inspector train --config rdna_paper
    """
    overrides = {
        "detector": detector,
        "data.root": data_root,
        "data.format": data_format,
        "data.category": category,
        "data.normal_dir": normal_dir,
        "data.abnormal_dir": abnormal_dir,
        "data.mask_dir": mask_dir,
        "data.normal_test_dir": normal_test_dir,
        "data.normal_class": normal_class,
        "data.anomaly_source": anomaly_source,
        "data.workers": loader_workers,
        "out": out,
        "name": name,
        "epochs": epochs,
        "max_steps": max_steps,
        "time_limit_minutes": time_limit,
        "batch_size": batch_size,
        "input_size": _input_size(input_size),
        "device": device,
        "seed": seed,
    }
    given = {key: value for key, value in overrides.items() if value is not None}
    folder_options = [OPTION_OF_KEY[key] for key in FOLDER_KEYS if key in given]
    if folder_options and data_format not in (None, "folder"):
        raise InspectorError(
            f"{', '.join(folder_options)} name the folders of --format folder, not {data_format}"
        )

    if config_path == "list":
        click.echo("\n".join(preset_names()))
        return
    if resume is None:
        if folder_options:
            given["data.format"] = "folder"
        if config_path is None and (detector or "rdna") + "_cpu" in preset_names():
            config_path = f"{detector or 'rdna'}_cpu"
        config = load_config(config_path, given)
        if name is None and config.name == "run" and config_path is None:
            config.name = config.detector
    else:
        if resume == RESUME_FROM_CONFIG:
            run_dir = load_config(
                config_path, {k: v for k, v in given.items() if k in ("out", "name")}
            ).run_dir
        else:
            run_dir = Path(resume)
            if config_path is not None:
                raise InspectorError("--resume RUN_DIR uses the run's own config.yaml; drop --config")
        fixed = sorted(key for key in given if key not in RESUMABLE and key not in ("out", "name"))
        if fixed:
            flags = ", ".join(dict.fromkeys(OPTION_OF_KEY[key] for key in fixed))
            raise InspectorError(f"{flags} cannot change when resuming {run_dir}; start a new run instead")
        if not (run_dir / "config.yaml").is_file():
            raise InspectorError(
                f"{run_dir} is not a run directory (no config.yaml); give the folder `inspector train` printed"
            )
        config = load_config(run_dir / "config.yaml", {k: v for k, v in given.items() if k in RESUMABLE})
        config.out, config.name = str(run_dir.parent), run_dir.name

    check_writable_folder(config.run_dir if resume is not None else config.out, "run folder")
    if devices is not None and devices > 1:
        _launch(devices, config.device, backend)
        return
    from inspector.training.trainer import TrainingInterrupted, train

    try:
        run_dir = train(
            config,
            resume=resume is not None,
            progress=not no_progress,
            evaluate=not no_eval,
            log=_log,
            backend=backend,
        )
    except TrainingInterrupted as interrupted:
        if _rank_zero():
            click.echo(f"\n{interrupted}", err=True)
        raise SystemExit(exit_code_for_signal(interrupted.signal_number)) from None
    if not _rank_zero():
        return  # under torchrun, rank 0 reports the run
    # The metrics summary was printed by the evaluation at the end of training.
    click.echo(f"run: {run_dir}")
    click.echo(f"next: inspector eval {run_dir}" if no_eval else f"next: inspector export {run_dir}")


def _rank_zero() -> bool:
    """Not a process of torchrun's above rank 0 (those leave the reporting to rank 0)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _launch(devices: int, device: str, backend: str) -> None:
    """``--devices N``: this command again as N processes under torchrun, without ``--devices``."""
    if os.environ.get("WORLD_SIZE", "").strip():
        raise InspectorError(
            "--devices starts its own processes; under torchrun (WORLD_SIZE is set) drop --devices"
        )
    import torch

    from inspector.training.device import resolve_device
    from inspector.training.distributed import choose_backend, launch_on_this_machine

    target = resolve_device(device)
    choose_backend(backend, target)  # an unavailable backend fails here, not in N processes
    if target.type == "cuda" and devices > torch.cuda.device_count():
        raise InspectorError(
            f"--devices {devices} but this machine has {torch.cuda.device_count()} CUDA GPU(s); use at most that "
            "many (or --device cpu for CPU processes)"
        )
    context = click.get_current_context()
    code = launch_on_this_machine(devices, _given_arguments(context, leave_out=("devices",)))
    if code:
        raise SystemExit(code)


def _given_arguments(context: click.Context, leave_out: tuple[str, ...]) -> list[str]:
    """The options given on this command line, as arguments again (for the processes torchrun starts)."""
    arguments: list[str] = []
    last: list[str] = []
    for param in context.command.params:
        if param.name in leave_out or context.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = context.params[param.name]
        option = param.opts[0]
        if isinstance(param, click.Option) and param.is_flag:
            if value:
                arguments.append(option)
        elif value == RESUME_FROM_CONFIG:
            last.append(option)  # ``--resume`` alone: last, where nothing can be read as its value
        else:
            arguments += [option, str(value)]
    return arguments + last
