"""Training: one function you can read top to bottom, then evaluation and calibration of the result.

``train(config)`` reads the data, builds the detector, runs the optimisation loop with validation,
checkpoints and a history, and finally scores the validation and test splits (``training.evaluate``).
What it writes is the run directory of docs/architecture.md (section 3)::

    runs/<name>/config.yaml              the fully resolved configuration
    runs/<name>/checkpoints/last.pt      resumable, written atomically
    runs/<name>/checkpoints/best.pt      lowest validation loss so far
    runs/<name>/history.csv              one row per step: losses, validation loss, learning rate, time
    runs/<name>/metrics.json, calibration.json, plots/

Under torchrun (``inspector train --devices N``) every process runs this same loop on its share of each
batch (``training.distributed``): gradients are averaged before every optimizer step, and only rank 0
validates, writes the run directory and draws the progress bar; the others wait for it where it matters.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
import math
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from inspector.config import TrainConfig
from inspector.errors import ImageReadError, InspectorError
from inspector.training.batchnorm import refresh_best_batchnorm
from inspector.training.checkpoint import (
    atomic_write,
    atomic_write_text,
    checkpoint_path,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from inspector.training.data import build_splits, training_datasets
from inspector.training.detectors.base import Detector, build_detector
from inspector.training.device import resolve_device
from inspector.training.distributed import GradientSync, World, joined, rank_seed

HISTORY_FILE = "history.csv"
#: How the run ended and how much of its plan it did; evaluation copies it into ``metrics.json``.
TRAINING_SUMMARY_FILE = "training.json"


class _Diverged(InspectorError):
    """Non-finite losses: the weights are no longer worth saving."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: ``last.pt`` was saved at ``step`` and the run can be resumed."""

    def __init__(self, run_dir: Path, step: int, signal_number: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted at step {step}; resume with: inspector train --resume {run_dir}")
        self.run_dir = run_dir
        self.step = step
        #: The signal that stopped training: the command exits with 128 + it, as a shell expects.
        self.signal_number = int(signal_number)


def train(
    config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    log=print,
    backend: str = "auto",
) -> Path:
    """Train ``config.detector`` on ``config.data``; return the run directory.

    With ``resume`` the run ``config.run_dir`` continues from its ``last.pt`` at the saved step, with the
    saved optimizer state and random streams. Without it a new run directory is made (``<name>-2``,
    ``<name>-3``... when ``<name>`` is taken). With ``evaluate`` the best checkpoint is scored and calibrated
    at the end (``metrics.json``, ``calibration.json``, ``plots/``). ``time_limit_minutes`` bounds the run's
    whole training time, resumed sessions included; the learning-rate schedule follows whichever budget,
    steps or time, binds.

    Started by torchrun (the ``RANK``, ``WORLD_SIZE``... variables set), every process calls this: they
    join a process group (``backend``: ``auto`` = NCCL on CUDA, gloo on the CPU), each trains on its share
    of every batch (``batch_size`` is the total over the processes) and the gradients are averaged; only rank
    0 logs, writes the run directory and evaluates. Every process returns the run directory.

    Raises:
        InspectorError: bad input (data, detector, options, device, torchrun variables, backend); nothing in
            the run directory is lost.
        TrainingInterrupted: Ctrl-C or SIGTERM; ``last.pt`` holds the state to resume from.

    Example:
        >>> run_dir = train(load_config("rdna_cpu", {"epochs": 1}))
    """
    with joined(resolve_device(config.device), backend) as world, _warnings_from_rank_zero(world):
        if not world.is_main:
            log, progress = _quiet, False
        run = _prepare_run(copy.deepcopy(config), resume, log, world)
        stopped_by = _train_loop(run, progress)
        if world.is_main:
            _finish_run(run, stopped_by, log)
        world.barrier()  # every process returns once the checkpoints are final
    if evaluate and world.is_main:
        from inspector.training.evaluate import evaluate_run

        try:
            evaluate_run(run.run_dir, checkpoint="best", device=run.config.device, log=log)
        except InspectorError as error:
            raise InspectorError(
                f"{error} (training finished and is saved in {run.run_dir}; fix this, then run "
                f"`inspector eval {run.run_dir}`)"
            ) from None
    return run.run_dir


def _quiet(line: str) -> None:
    """The log of ranks above 0: rank 0 speaks for the run."""


@contextlib.contextmanager
def _warnings_from_rank_zero(world: World) -> Iterator[None]:
    """Ranks above 0 keep the package's logged warnings (e.g. about the anomaly source) to themselves:
    rank 0 logs the same ones. Errors still show."""
    logger = logging.getLogger("inspector")
    level = logger.level
    if not world.is_main:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass
class _Run:
    """A training run as the loop sees it: what was set up, and the counters the loop moves."""

    config: TrainConfig
    run_dir: Path
    resume: bool
    device: torch.device
    detector: Detector
    train_set: Dataset
    val_set: Dataset
    sampler: _EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    time_limit: float | None
    world: World = World()
    step: int = 0
    best_val_loss: float | None = None
    val_loss: float | None = None
    started: float = 0.0  # time.monotonic() of step 0, earlier sessions included
    elapsed_before: float = 0.0  # training time of earlier sessions of this run

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.detector.channels_last else torch.contiguous_format

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def save(self, which: str) -> None:
        """Write checkpoint ``which`` (rank 0 only: the weights are the same on every process)."""
        if not self.world.is_main:
            return
        save_checkpoint(
            checkpoint_path(self.run_dir, which),
            self.detector,
            self.config,
            epoch=self.step // self.steps_per_epoch,
            step=self.step,
            best_val_loss=self.best_val_loss,
            val_loss=self.val_loss,
            elapsed_seconds=self.elapsed(),
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
        )


def _prepare_run(config: TrainConfig, resume: bool, log, world: World = World()) -> _Run:
    """Data, run directory, detector, loaders and budgets (and the saved state when resuming)."""
    device = world.device(resolve_device(config.device))
    # The data first: a missing folder or unknown category fails before anything is written.
    splits = build_splits(config)
    if not splits.train:
        raise InspectorError("the training split holds no images; add normal training images")
    checkpoint = None
    if resume:
        run_dir = config.run_dir
        checkpoint = _resume_checkpoint(run_dir, log)
        if checkpoint["detector"] != config.detector:
            raise InspectorError(
                f"{run_dir} was trained as '{checkpoint['detector']}', not '{config.detector}'; resume it "
                "with its own config.yaml"
            )
    else:
        # Rank 0 picks the new folder (``<name>-2`` when taken); the others take its choice.
        run_dir = world.broadcast(_new_run_dir(config.run_dir) if world.is_main else None)
        config.name = run_dir.name

    _seed_everything(config.seed)
    detector = _build_detector(config).to(device)
    if config.crop_size is not None and not detector.uses_synthetic_anomalies:
        raise InspectorError(
            f"crop_size works with the fully convolutional detectors (rdna, draem), not '{config.detector}'"
        )
    train_set, val_set = training_datasets(config, splits, detector.uses_synthetic_anomalies)
    batch_size = _batch_size(config.batch_size, len(train_set), world.size)
    if batch_size < config.batch_size:
        log(
            f"warning: only {len(train_set)} training images: batch size {batch_size} instead of {config.batch_size}"
        )
    steps_per_epoch = len(train_set) // batch_size
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    if total_steps < 1:
        raise InspectorError(
            f"nothing to train: epochs {config.epochs}, max_steps {config.max_steps}; use >= 1"
        )

    sampler = _EpochSampler(len(train_set), config.seed, world.rank, world.size, batch_size)
    workers = max(0, int(config.data.workers))
    # Rank 0 keeps the one-process streams; the others draw their own worker seeds.
    loader_seed = config.seed if world.is_main else rank_seed(config.seed, world.rank)
    run = _Run(
        config=config,
        run_dir=run_dir,
        resume=resume,
        device=device,
        detector=detector,
        train_set=train_set,
        val_set=val_set,
        sampler=sampler,
        train_loader=DataLoader(
            _EpochItems(train_set),
            batch_size=batch_size // world.size,
            sampler=sampler,
            drop_last=True,  # equal batches: batch norm and the loss scale do not jump at an epoch's end
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(loader_seed),
            pin_memory=device.type == "cuda",
        ),
        val_loader=DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=0),
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        time_limit=None if config.time_limit_minutes is None else 60.0 * config.time_limit_minutes,
        world=world,
    )
    detector.to(memory_format=run.memory_format)
    detector.configure_optimizers(config.lr, total_steps)
    if checkpoint is not None:
        detector.load_state_dict(checkpoint["model"])
        detector.load_optimizer_state(checkpoint["optimizer"])
        restore_rng_state(checkpoint["rng"])
        run.step, run.best_val_loss = int(checkpoint["step"]), checkpoint["best_val_loss"]
        run.elapsed_before = float(checkpoint["elapsed_seconds"])
        if checkpoint.get("steps_per_epoch") not in (None, steps_per_epoch):
            log(
                f"warning: the training data changed since the run started ({checkpoint['steps_per_epoch']} "
                f"steps per epoch then, {steps_per_epoch} now); resuming, but not exactly where it stopped"
            )
        log(f"resuming {run_dir} at step {run.step} of {total_steps}")
    if not world.is_main:
        # The checkpoint holds rank 0's random streams, and a new run seeded them alike on every rank: the
        # others draw their own (noise, latent codes), from the seed, their rank and the step.
        _seed_everything(rank_seed(config.seed, world.rank, run.step))
    run.started = time.monotonic() - run.elapsed_before

    if world.is_main:
        _remove_stale_temporary_files(run_dir)
        atomic_write_text(run_dir / "config.yaml", _yaml(config))
    processes = f" x {world.size} processes ({world.backend})" if world.is_distributed else ""
    log(
        f"training {config.detector} on {_describe(splits)} ({len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test)} test images) on {device.type}{processes}: {total_steps} steps of batch {batch_size} "
        f"({steps_per_epoch} per epoch){_limit_text(run.time_limit)} -> {run_dir}"
    )
    if resume and run.step >= total_steps:
        log(
            f"{run_dir} already trained {run.step} of {total_steps} steps; raise --epochs or --max-steps to train further"
        )
    if run.time_limit is not None and run.elapsed_before >= run.time_limit:
        log(
            f"{run_dir} already used its time limit ({run.time_limit / 60:g} min); raise --time-limit to train further"
        )
    return run


def _train_loop(run: _Run, progress: bool) -> str:
    """Optimise until the steps, the time limit or the detector's criterion end the run; return which
    (``done``, ``time limit``, ``detector``). Ctrl-C, SIGTERM and data errors save ``last.pt`` first."""
    config, detector, world = run.config, run.detector, run.world
    history = (
        _History(run.run_dir / HISTORY_FILE, keep_until_step=run.step if run.resume else None)
        if world.is_main
        else None
    )
    bar = _ProgressBar(run.total_steps, enabled=progress and world.is_main, time_limit=run.time_limit)
    sync = GradientSync(detector, world)
    sync.start()
    stop = _StopOnInterrupt(distributed=world.is_distributed, announce=world.is_main)
    session_start, session_start_step = time.monotonic(), run.step
    last_saved, last_saved_step = time.monotonic(), run.step
    out_of_time = run.time_limit is not None and run.elapsed_before >= run.time_limit
    stopped_by = "time limit" if out_of_time else "done"
    try:
        with stop:
            detector.train()
            while run.step < run.total_steps and stopped_by == "done":
                # Resuming mid-epoch skips the batches that epoch already trained on.
                run.sampler.set_epoch(
                    run.step // run.steps_per_epoch, skip=(run.step % run.steps_per_epoch) * run.batch_size
                )
                for batch in _batches(run.train_loader, stop):
                    progress = _progress(run.step, run.total_steps, run.elapsed(), run.time_limit)
                    if run.time_limit is not None:
                        # A schedule on time follows rank 0's clock: one learning rate on every process.
                        progress = world.broadcast_float(progress)
                    detector.set_progress(progress)
                    losses = detector.training_step(_to_device(batch, run.device, run.memory_format))
                    sync.after_step()
                    run.step += 1
                    elapsed = run.elapsed()
                    # One decision for every process: any rank's divergence, clock or Ctrl-C stops them all.
                    diverged, out_of_time, interrupted = world.any(
                        not all(math.isfinite(value) for value in losses.values()),
                        run.time_limit is not None and elapsed >= run.time_limit,
                        stop.requested,
                    )
                    if diverged:
                        raise _Diverged(
                            f"training diverged at step {run.step} (losses {_format_losses(losses)}); lower "
                            f"the learning rate (lr {config.lr}) or resume {run.run_dir} from its last checkpoint"
                        )
                    finishing = run.step >= run.total_steps or out_of_time
                    run.val_loss = None
                    # Not at every epoch's end: on a small folder (18 steps per epoch) that doubled a step's cost.
                    if len(run.val_set) and (run.step % config.val_every_steps == 0 or finishing):
                        detector_stops = False
                        if world.is_main:  # the weights are the same everywhere: rank 0 validates
                            run.val_loss = _validation_loss(detector, run.val_loader, run.device)
                            detector.train()
                            if run.best_val_loss is None or run.val_loss < run.best_val_loss:
                                run.best_val_loss = run.val_loss
                                run.save("best")
                            detector_stops = detector.should_stop  # a detector's own criterion (ALOCC's rho)
                        (detector_stops,) = world.any(detector_stops)
                        if detector_stops:
                            stopped_by, finishing = "detector", True
                    if history is not None:
                        history.write(
                            run.step,
                            run.step / run.steps_per_epoch,
                            losses,
                            run.val_loss,
                            _learning_rate(detector),
                            elapsed,
                        )
                    bar.update(
                        run.step,
                        losses,
                        run.val_loss,
                        elapsed,
                        session_steps=run.step - session_start_step,
                        session_seconds=time.monotonic() - session_start,
                    )
                    if interrupted:
                        raise KeyboardInterrupt
                    if out_of_time:
                        stopped_by = "time limit"
                    if finishing:
                        break
                    if _checkpoint_due(config, run.step - last_saved_step, time.monotonic() - last_saved):
                        run.save("last")
                        last_saved, last_saved_step = time.monotonic(), run.step
    except KeyboardInterrupt:
        run.save("last")
        _wait_for_rank_zero(
            world
        )  # torchrun stops every process once one exits: not before last.pt is written
        raise TrainingInterrupted(run.run_dir, run.step, stop.signal_number) from None
    except InspectorError as error:
        if run.step > 0 and not isinstance(error, _Diverged):
            # A bad image found mid-run: keep the progress so that the run resumes once it is fixed.
            run.save("last")
            raise InspectorError(
                f"{error} (training stopped at step {run.step}, saved in {run.run_dir}; after fixing it resume "
                f"with `inspector train --resume {run.run_dir}`)"
            ) from None
        if (
            world.is_main
            and not run.resume
            and not any(checkpoint_path(run.run_dir, w).exists() for w in ("last", "best"))
        ):
            _discard_unstarted_run(run.run_dir)
        raise
    finally:
        sync.close()
        bar.close()
        if history is not None:
            history.close()
    return stopped_by


def _finish_run(run: _Run, stopped_by: str, log) -> None:
    """``last.pt``, ``best.pt`` with recomputed batch-norm statistics, the log line and ``training.json``."""
    run.save("last")
    if not len(run.val_set):
        # No validation images to choose by: the final weights are the best we know.
        log("warning: no validation images (the training split is too small): best.pt is the final model")
        final = checkpoint_path(run.run_dir, "last").read_bytes()
        atomic_write(checkpoint_path(run.run_dir, "best"), lambda handle: handle.write(final))
    if run.detector.recompute_batchnorm and checkpoint_path(run.run_dir, "best").exists():
        log("recomputing best.pt's batch-norm statistics for its weights on training images")
        images, layers = refresh_best_batchnorm(run.run_dir, run.device, run.train_set)
        log(f"best.pt: batch-norm statistics of {layers} layers recomputed on {images} training images")
    minutes = run.elapsed() / 60.0
    reason = {
        "time limit": "stopped by the time limit",
        "detector": "stopped by the detector's criterion",
    }.get(stopped_by, "done")
    log(
        f"trained {run.step} steps ({run.step / run.steps_per_epoch:.1f} epochs) in {minutes:.1f} min, {reason}; "
        f"best validation loss {_format_value(run.best_val_loss)}"
    )
    if stopped_by == "time limit" and run.step < run.total_steps:
        log(
            f"note: the time limit cut the run at step {run.step} of the {run.total_steps} planned; the "
            "learning-rate schedule followed the time, so it was completed"
        )
    summary = {
        "steps": run.step,
        "planned_steps": run.total_steps,
        "stopped_by": stopped_by,
        "time_limit_minutes": run.config.time_limit_minutes,
        "minutes": round(minutes, 3),
        "steps_per_second": round(run.step / max(minutes * 60.0, 1e-9), 4),
    }
    atomic_write_text(run.run_dir / TRAINING_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


# --- the pieces the loop uses ------------------------------------------------------------------------


def _resume_checkpoint(run_dir: Path, log) -> dict:
    """``last.pt`` of a run to resume, or ``best.pt`` when a kill came before ``last.pt`` was written."""
    last, best = checkpoint_path(run_dir, "last"), checkpoint_path(run_dir, "best")
    if not last.is_file() and best.is_file():
        log(f"{last} is missing (the run was killed before writing it): resuming from {best.name}")
        return load_checkpoint(best)
    return load_checkpoint(last)


def _wait_for_rank_zero(world: World) -> None:
    """A barrier that gives up quietly: on an interrupt another process may already be gone."""
    try:
        world.barrier()
    except Exception:  # noqa: BLE001 - a process group torn down by the interrupt itself
        pass


def _batch_size(wanted: int, images: int, processes: int) -> int:
    """The total batch of a step: ``wanted``, fewer on a small training set, split evenly over the processes.

    Raises:
        InspectorError: a batch that the processes cannot share evenly, or fewer images than processes.
    """
    if wanted % processes:
        raise InspectorError(
            f"batch_size {wanted} does not split evenly over {processes} processes (it is the total over "
            f"them): use a multiple of {processes}, such as {max(processes, wanted - wanted % processes)}"
        )
    batch_size = min(wanted, images)
    batch_size -= batch_size % processes
    if batch_size < 1:
        raise InspectorError(
            f"only {images} training images for {processes} processes: use fewer processes or more images"
        )
    return batch_size


def _progress(step: int, total_steps: int, elapsed: float, time_limit: float | None) -> float:
    """How far through its budget the run is: steps or time, whichever binds (0 to 1)."""
    progress = step / total_steps
    if time_limit is not None and time_limit > 0:
        progress = max(progress, elapsed / time_limit)
    return min(progress, 1.0)


def _checkpoint_due(config: TrainConfig, steps_since: int, seconds_since: float) -> bool:
    every_steps = config.checkpoint_every_steps
    return seconds_since >= config.checkpoint_every_seconds or (
        every_steps is not None and steps_since >= every_steps
    )


def _remove_stale_temporary_files(run_dir: Path) -> None:
    """Temporary files a killed writer left behind (``.last.pt.*.tmp``...): never a valid file."""
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            for leftover in folder.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)


def _build_detector(config: TrainConfig) -> Detector:
    try:
        return build_detector(
            config.detector, tuple(config.input_size), config.channels, config.detector_options
        )
    except ValueError as error:
        raise InspectorError(f"detector '{config.detector}': bad detector_options ({error})") from None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch gives each worker its own seed (base seed + worker id); numpy and random follow it, so no two
    # workers share a random stream.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _EpochSampler:
    """A seeded shuffle per epoch, yielding ``(epoch, index)`` so the epoch reaches every worker.

    The order of epoch ``e`` depends only on ``(seed, e)``: a resumed run sees the batches the uninterrupted
    run would have seen, and ``skip`` drops the ones an interrupted epoch already used.

    With ``world_size`` processes (``batch_size`` the total batch of a step) each rank yields its share:
    step ``k``'s total batch is the one process's batch ``k``, cut in ``world_size`` equal slices, slice
    ``rank`` for this rank. Every image of an epoch goes to one rank only, the incomplete last batch is left
    out (as the loader's ``drop_last`` does for one process), and a run resumes exactly whatever the number
    of processes before and after. The synthetic anomalies are drawn from ``(seed, epoch, index)``: with
    each index on one rank, no two ranks paste the same anomaly, and their seeds need no rank in them (which
    would give a resumed run other anomalies on another number of processes).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, batch_size: int = 1) -> None:
        self.size, self.seed = size, seed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)[self.skip :]
        if self.world_size > 1:
            steps, share = len(order) // self.batch_size, self.batch_size // self.world_size
            order = order[: steps * self.batch_size].reshape(steps, self.world_size, share)[:, self.rank]
            order = order.reshape(-1)
        return iter([(self.epoch, int(index)) for index in order])

    def __len__(self) -> int:
        if self.world_size > 1:
            return (self.size - self.skip) // self.batch_size * (self.batch_size // self.world_size)
        return self.size - self.skip


class _EpochItems(Dataset):
    """Items addressed by ``(epoch, index)``: persistent workers keep their own dataset copy, so the
    epoch (which selects the synthetic anomalies) has to travel with the index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def _batches(loader: DataLoader, stop: _StopOnInterrupt) -> Iterator[dict]:
    """The loader's batches, with data errors from any worker turned into one-line InspectorErrors."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except InspectorError as error:
            message = _first_cause(error)
            if isinstance(error, ImageReadError):
                message += "; replace or remove the file and train again"
            raise type(error)(message) from None
        except RuntimeError:
            # Ctrl-C also reaches the loader's worker processes, which exit; that is our stop, not an error.
            if stop.requested:
                raise KeyboardInterrupt from None
            raise
        yield batch


def _first_cause(error: Exception) -> str:
    """The original message of an error re-raised from a data-loader worker (which adds a traceback)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return str(error)
    last = lines[-1]
    for prefix in (f"{type(error).__module__}.{type(error).__qualname__}: ", f"{type(error).__qualname__}: "):
        if last.startswith(prefix):
            return last[len(prefix) :]
    return last


def _to_device(
    batch: dict, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
) -> dict:
    def move(value: torch.Tensor) -> torch.Tensor:
        value = value.to(device, non_blocking=True)
        return value.contiguous(memory_format=memory_format) if value.dim() == 4 else value

    return {key: move(value) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


@torch.no_grad()
def _validation_loss(detector: Detector, loader: DataLoader, device: torch.device) -> float:
    """The detector's validation loss, averaged over every validation image."""
    detector.eval()
    total, count = 0.0, 0
    for batch in loader:
        size = len(batch["image"])
        total += detector.validation_loss(_to_device(batch, device)) * size
        count += size
    return total / max(count, 1)


def _learning_rate(detector: Detector) -> float | None:
    for optimizer in detector.optimizers.values():
        return float(optimizer.param_groups[0]["lr"])
    return None


def _new_run_dir(wanted: Path) -> Path:
    """``wanted``, or ``wanted-2``, ``wanted-3``... when it holds files: a new run never overwrites one."""
    candidate, number = wanted, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        number += 1
        candidate = wanted.with_name(f"{wanted.name}-{number}")
    return candidate


def _discard_unstarted_run(run_dir: Path) -> None:
    """Remove what this call wrote into a new run that never reached a checkpoint (nothing else)."""
    for name in ("config.yaml", HISTORY_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for folder in (run_dir / "checkpoints", run_dir):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _describe(splits) -> str:
    description = splits.description or {}
    parts = [str(description.get("dataset", "data")), str(description.get("category") or "")]
    return "/".join(part for part in parts if part)


def _limit_text(time_limit: float | None) -> str:
    return "" if time_limit is None else f", at most {time_limit / 60.0:g} min"


def _format_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.4g}" for name, value in losses.items())


class _History:
    """``history.csv``: one row per step, flushed as it goes; a resumed run drops rows after its step."""

    def __init__(self, path: Path, keep_until_step: int | None) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if keep_until_step is not None and path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                self.fields = reader.fieldnames
                rows = [row for row in reader if int(float(row["step"])) <= keep_until_step]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(path, buffer.getvalue())
            self.handle = path.open("a", newline="", encoding="utf-8")
        else:
            self.handle = path.open("w", newline="", encoding="utf-8")
        self.writer = (
            None
            if self.fields is None
            else csv.DictWriter(self.handle, fieldnames=self.fields, extrasaction="ignore", restval="")
        )

    def write(
        self,
        step: int,
        epoch: float,
        losses: dict[str, float],
        val_loss: float | None,
        lr: float | None,
        elapsed: float,
    ) -> None:
        if self.writer is None:
            self.fields = ["step", "epoch", *losses, "val_loss", "lr", "elapsed"]
            self.writer = csv.DictWriter(
                self.handle, fieldnames=self.fields, extrasaction="ignore", restval=""
            )
            self.writer.writeheader()
        row = {"step": step, "epoch": f"{epoch:.4f}", **{k: f"{v:.6g}" for k, v in losses.items()}}
        row.update(
            {
                "val_loss": "" if val_loss is None else f"{val_loss:.6g}",
                "lr": "" if lr is None else f"{lr:.6g}",
                "elapsed": f"{elapsed:.2f}",
            }
        )
        self.writer.writerow(row)
        self.handle.flush()

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()


class _StopOnInterrupt:
    """First Ctrl-C or SIGTERM (``docker stop``, systemd, ``timeout``, preemption): finish the current
    step, save ``last.pt`` and stop. A second one stops at once.

    On several processes the torchrun agent passes the terminal's Ctrl-C on to processes that got it
    already: a repeat within ``REPEAT_GRACE_SECONDS`` is that same request, not a second one (stopping at
    once would leave the processes in different collectives).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_GRACE_SECONDS = 3.0

    def __init__(self, distributed: bool = False, announce: bool = True) -> None:
        self.requested = False
        self.signal_number = int(signal.SIGINT)
        self.grace = self.REPEAT_GRACE_SECONDS if distributed else 0.0
        self.announce = announce
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        # Signal handlers can only be installed from the main thread; elsewhere Ctrl-C raises as usual.
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if time.monotonic() - self._first_at < self.grace:
                return
            raise KeyboardInterrupt
        self.requested = True
        self._first_at = time.monotonic()
        self.signal_number = int(signum)
        if not self.announce:
            return
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(
            f"\n{name}: stopping after this step and saving last.pt (again to stop at once)", file=sys.stderr
        )

    def __exit__(self, *exc_info) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}


class _ProgressBar:
    """One status line: step, bar, smoothed losses, validation loss, speed and time left.

    On a terminal the line is redrawn in place; in a log file a line is written every 5 % of the run.
    """

    def __init__(self, total: int, enabled: bool, time_limit: float | None, stream=None) -> None:
        self.total = total
        self.enabled = enabled
        self.time_limit = time_limit
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.smoothed: dict[str, float] = {}
        self.val_loss: float | None = None
        self.last_draw = 0.0
        self.every = max(1, total // 20)
        self.drawn = False

    def update(
        self,
        step: int,
        losses: dict[str, float],
        val_loss: float | None,
        elapsed: float,
        session_steps: int,
        session_seconds: float,
    ) -> None:
        for name, value in losses.items():
            previous = self.smoothed.get(name)
            self.smoothed[name] = value if previous is None else 0.9 * previous + 0.1 * value
        if val_loss is not None:
            self.val_loss = val_loss
        if not self.enabled:
            return
        now = time.monotonic()
        final = step >= self.total
        if self.interactive and not final and now - self.last_draw < 0.2:
            return
        if not self.interactive and not final and step % self.every != 0:
            return
        self.last_draw = now
        rate = session_steps / session_seconds if session_seconds > 0 else 0.0
        left = (self.total - step) / rate if rate > 0 else float("inf")
        if self.time_limit is not None:
            left = min(left, max(0.0, self.time_limit - elapsed))
        filled = int(20 * step / self.total)
        losses_text = " ".join(f"{name} {value:.4g}" for name, value in self.smoothed.items())
        val_text = "" if self.val_loss is None else f" | val_loss {self.val_loss:.4g}"
        # Time first: a narrow terminal cuts the end of the line, and the losses can spare it.
        line = (
            f"step {step}/{self.total} [{'#' * filled}{'.' * (20 - filled)}] {_clock(elapsed)} elapsed, "
            f"ETA {_clock(left)}, {rate:.2f} it/s | {losses_text}{val_text}"
        )
        if self.interactive:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self.stream.write("\r" + line[:width].ljust(width))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.enabled and self.interactive and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
