"""Inspect a folder of images: batches flow through three stages, each on its own threads, to the report.

A batch is decoded and preprocessed, run through the model, then given its regions and overlays; the
stages overlap, so the model is rarely idle while files are read or overlays drawn. On the CPU each model
call gets its share of the cores (by default one model thread and one inference thread per core), which
keeps every core busy without the per-operator synchronisation that splitting one call costs. The main
thread writes the records in file order, one line per image.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.errors import ImageReadError, InspectorError
from inspector.io import FolderLock, atomic_write_text, display_path, is_inside, list_images, os_error_text
from inspector.preprocess import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, read_image
from inspector.runtime.html_report import write_html_report
from inspector.runtime.overlay import (
    MASK_SUFFIX,
    OVERLAY_SUFFIX,
    OVERLAYS_DIR,
    SAVE_CHOICES,
    output_stems,
    render_mask,
    render_overlay,
    wants_overlay,
    write_image,
)
from inspector.runtime.report import Report
from inspector.runtime.result import Result
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import physical_cores

SUMMARY_NAME = "summary.json"
MASKS_DIR = "masks"
DEFAULT_BATCH_SIZE = 8
SLOWEST_LISTED = 5


@dataclass
class _Item:
    key: str
    path: Path
    image: np.ndarray | None = None
    error: str | None = None
    seconds: float = 0.0  # this image's decode, preprocessing, share of its batch's inference, drawing


def inspect_folder(
    folder: str | Path,
    scorer: Scorer,
    out_dir: str | Path,
    *,
    recursive: bool = False,
    save: str = "all",
    save_masks: bool = False,
    resume: bool = False,
    force: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_total: Callable[[int], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Score every image under ``folder`` and write ``report.csv``, ``report.jsonl``, overlays,
    ``summary.json`` and ``report.html`` (:mod:`inspector.runtime.html_report`) into ``out_dir``. Returns
    the summary.

    ``save`` chooses which overlays are written (all, anomalous, none); ``save_masks`` also writes the
    plain defect masks. ``resume`` skips images already in the report. Unreadable files (not decodable,
    not regular files, declaring more than ``max_pixels`` pixels) are reported with their reason and the
    run goes on. What the run writes is never read as input, wherever ``out_dir`` is; ``out_dir`` is locked
    for the run. ``on_total`` gets the number of images to score, ``on_record`` each record as it is written
    (for a progress bar).

    Raises:
        InspectorError: the folder is missing or holds no image-named files, a report exists and neither
            ``resume`` nor ``force`` is given, another run writes into ``out_dir``, or a file cannot be
            written (full disk, read-only folder); the records written so far stay in the report.
        KeyboardInterrupt: after writing what was finished and a summary marked ``interrupted``.
    """
    if save not in SAVE_CHOICES:
        raise InspectorError(f"--save {save!r}: choose one of {', '.join(SAVE_CHOICES)}")
    if batch_size < 1 or workers < 0:
        raise InspectorError("--batch-size must be at least 1 and --workers at least 0 (0: one per core)")
    workers = workers or physical_cores()
    folder, out_dir = Path(folder), Path(out_dir)
    images = list_images(folder, recursive, exclude=_written_folders(folder, out_dir))
    if not images:
        hint = "" if recursive else " (add --recursive to look in sub-folders)"
        raise InspectorError(
            f"{display_path(folder)}: no image files found{hint}; image files end in {', '.join(IMAGE_EXTENSIONS)}"
        )
    with FolderLock(out_dir):
        return _inspect(
            folder,
            images,
            scorer,
            out_dir,
            save,
            save_masks,
            resume,
            force,
            batch_size,
            workers,
            max_pixels,
            on_total,
            on_record,
        )


def _written_folders(folder: Path, out_dir: Path) -> list[Path]:
    """The folders a run into ``out_dir`` writes, which are never read as input: its overlays and masks,
    and ``out_dir`` itself unless it is the folder being inspected."""
    written = [out_dir / OVERLAYS_DIR, out_dir / MASKS_DIR]
    if is_inside(folder, written):
        raise InspectorError(
            f"{display_path(folder)} is where a run into --out {display_path(out_dir)} writes its overlays or "
            "masks; inspect the original images, or choose another --out"
        )
    return written if is_inside(folder, [out_dir]) else [*written, out_dir]


def _inspect(
    folder: Path,
    images: list[tuple[str, Path]],
    scorer: Scorer,
    out_dir: Path,
    save: str,
    save_masks: bool,
    resume: bool,
    force: bool,
    batch_size: int,
    workers: int,
    max_pixels: int | None,
    on_total: Callable[[int], None] | None,
    on_record: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    report = Report(out_dir, resume=resume, force=force)
    todo = [(key, path) for key, path in images if key not in report.previous]
    if on_total:
        on_total(len(todo))
    records = list(report.previous.values())
    run = _Run(scorer, out_dir, save, save_masks, output_stems([key for key, _ in images]), max_pixels)
    started = time.perf_counter()
    failure: BaseException | None = None
    try:
        _pipeline(todo, run, report, records, batch_size, workers, on_record)
    except OSError as error:
        failure = InspectorError(
            f"cannot write {os_error_text(error)}; the {len(records)} images reported so far are in "
            f"{display_path(report.csv_path)}: fix this, then continue with --resume"
        )
    except BaseException as error:  # noqa: BLE001 - Ctrl-C or a bug: re-raised once the report is closed
        failure = error
    closed = report.close()
    if closed is not None and failure is None:
        failure = InspectorError(f"cannot write {os_error_text(closed)}; the report may lack its last lines")
    summary = _summary(
        folder,
        out_dir,
        scorer,
        records,
        len(images),
        len(report.previous),
        run,
        time.perf_counter() - started,
        batch_size,
        workers,
        failure,
    )
    try:
        atomic_write_text(out_dir / SUMMARY_NAME, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        write_html_report(out_dir, summary, records)
    except OSError as error:
        if failure is None:
            failure = InspectorError(
                f"cannot write {os_error_text(error)}; the report of all {len(records)} images is in "
                f"{display_path(report.csv_path)}"
            )
    if failure is not None:
        raise failure from None
    return summary


@dataclass
class _Run:
    scorer: Scorer
    out_dir: Path
    save: str
    save_masks: bool
    stems: dict[str, str]  # report key -> overlay and mask name without extension (output_stems)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    processed: int = 0
    model_seconds: float = 0.0


def _pipeline(
    todo: Sequence[tuple[str, Path]],
    run: _Run,
    report: Report,
    records: list[dict[str, Any]],
    batch_size: int,
    workers: int,
    on_record: Callable[[dict[str, Any]], None] | None,
) -> None:
    chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    # Each batch passes three stages, each on its own threads: decoding and preprocessing, the model, then
    # regions and overlays. While a model call runs, the next batch is decoded and the last one drawn, so
    # the model's threads rarely wait (at batch 1 with every core in one call, the stages around the model
    # were a fifth of the time when they ran in turn).
    in_flight = 3 * workers
    readers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect-read")
    models = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect-model")
    drawers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect-draw")
    pending: deque[Future[tuple[list[dict[str, Any]], float]]] = deque()
    next_chunk = 0

    def submit(chunk: Sequence[tuple[str, Path]]) -> Future[tuple[list[dict[str, Any]], float]]:
        loaded = readers.submit(_load, chunk, run)
        scored = models.submit(_score, loaded, run)
        return drawers.submit(_draw, scored, run)

    def write_batch(done: Future[tuple[list[dict[str, Any]], float]]) -> None:
        batch_records, model_seconds = done.result()
        run.model_seconds += model_seconds
        for record in batch_records:
            report.write(record)
            records.append(record)
            run.processed += 1
            if on_record:
                on_record(record)

    def shut_down() -> None:
        # Upstream first: a stage waiting on a cancelled batch gets CancelledError and ends, never hangs.
        for pool in (readers, models, drawers):
            pool.shutdown(wait=True, cancel_futures=True)

    try:
        while next_chunk < len(chunks) or pending:
            while len(pending) < in_flight and next_chunk < len(chunks):
                pending.append(submit(chunks[next_chunk]))
                next_chunk += 1
            write_batch(pending.popleft())
    except (KeyboardInterrupt, OSError):
        shut_down()
        # Keep the batches that were finished before the interruption or the failed write, in order.
        while pending and not pending[0].cancelled() and pending[0].exception() is None:
            write_batch(pending.popleft())
        raise
    finally:
        shut_down()


@dataclass
class _Loaded:
    """A batch decoded and prepared for the model (``model_input`` None when no image could be read)."""

    items: list[_Item]
    readable: list[_Item]
    model_input: Any = None


@dataclass
class _Scored:
    """A batch with the model's raw scores and maps for its readable images, in order."""

    items: list[_Item]
    outputs: list[tuple[float, np.ndarray]]
    model_seconds: float = 0.0


def _load(chunk: Sequence[tuple[str, Path]], run: _Run) -> _Loaded:
    """Decode a batch's files and prepare the readable ones for the model."""
    items = [_read(key, path, run.max_pixels) for key, path in chunk]
    readable = [item for item in items if item.image is not None]
    if not readable:
        return _Loaded(items, readable)
    started = time.perf_counter()
    model_input = run.scorer.prepare([item.image for item in readable])
    share = (time.perf_counter() - started) / len(readable)
    for item in readable:
        item.seconds += share
    return _Loaded(items, readable, model_input)


def _score(loaded: Future[_Loaded], run: _Run) -> _Scored:
    """Run the model on a loaded batch."""
    batch = loaded.result()
    if batch.model_input is None:
        return _Scored(batch.items, [])
    started = time.perf_counter()
    raw_scores, raw_maps = run.scorer.infer(batch.model_input)
    model_seconds = time.perf_counter() - started
    for item in batch.readable:
        item.seconds += model_seconds / len(batch.readable)
    return _Scored(batch.items, list(zip(raw_scores, raw_maps)), model_seconds)


def _draw(scored: Future[_Scored], run: _Run) -> tuple[list[dict[str, Any]], float]:
    """Regions and overlays of a scored batch: its records in file order and the model's seconds."""
    batch = scored.result()
    outputs = iter(batch.outputs)
    records = [
        _unreadable_record(item) if item.image is None else _finish(item, *next(outputs), run)
        for item in batch.items
    ]
    return records, batch.model_seconds


def _read(key: str, path: Path, max_pixels: int | None) -> _Item:
    started = time.perf_counter()
    item = _Item(key, path)
    try:
        item.image = read_image(path, max_pixels)
    except ImageReadError as error:
        item.error = _reason(error, path)
    except MemoryError:
        item.error = "cannot be read (not enough memory to decode it)"
    except Exception as error:  # noqa: BLE001 - no file, however broken, may stop the run
        item.error = f"cannot be read ({type(error).__name__}: {error})"
    item.seconds = time.perf_counter() - started
    return item


def _finish(item: _Item, raw_score: float, raw_map: np.ndarray, run: _Run) -> dict[str, Any]:
    started = time.perf_counter()
    image = item.image
    assert image is not None
    result = Result(run.scorer.finish(image.shape, raw_score, raw_map), path=item.key)
    stem = run.stems[item.key]
    if wants_overlay(run.save, result.anomalous):
        result.overlay = f"{OVERLAYS_DIR}/{stem}{OVERLAY_SUFFIX}"
        write_image(run.out_dir / result.overlay, render_overlay(image, result.inspection))
    if run.save_masks:
        result.mask = f"{MASKS_DIR}/{stem}{MASK_SUFFIX}"
        write_image(run.out_dir / result.mask, render_mask(result.inspection))
    item.image = None  # release the decoded image as soon as possible
    item.seconds += time.perf_counter() - started
    result.seconds = item.seconds
    return result.to_record()


def _unreadable_record(item: _Item) -> dict[str, Any]:
    return Result(path=item.key, seconds=item.seconds, error=item.error).to_record()


def _reason(error: Exception, path: Path) -> str:
    # The error names the file; the report row already does, so keep only the reason.
    text = str(error)
    return text.removeprefix(f"{display_path(path)}: ")


def _summary(
    folder: Path,
    out_dir: Path,
    scorer: Scorer,
    records: list[dict[str, Any]],
    listed: int,
    resumed: int,
    run: _Run,
    seconds: float,
    batch_size: int,
    workers: int,
    failure: BaseException | None,
) -> dict[str, Any]:
    scored = [r for r in records if r["status"] == "ok"]
    anomalous = sum(1 for r in scored if r["label"] == "anomalous")
    this_run = records[resumed:]
    slowest = sorted((r for r in this_run if r["status"] == "ok"), key=lambda r: r["time_ms"], reverse=True)
    return {
        "folder": display_path(folder),
        "model": display_path(scorer.session.path),
        "providers": scorer.session.providers,
        "out": display_path(out_dir),
        "images": listed,
        "reported": len(records),
        "scored": len(scored),
        "anomalous": anomalous,
        "normal": len(scored) - anomalous,
        "unreadable": len(records) - len(scored),
        "resumed": resumed,
        "interrupted": isinstance(failure, KeyboardInterrupt),
        "error": str(failure) if isinstance(failure, InspectorError) else None,
        "image_threshold": scorer.image_threshold,
        "pixel_threshold": scorer.pixel_threshold,
        "batch_size": batch_size,
        "workers": workers,
        "this_run": {
            "images": run.processed,
            "seconds": round(seconds, 3),
            "images_per_second": round(run.processed / seconds, 2) if seconds > 0 else None,
            "model_seconds": round(run.model_seconds, 3),
        },
        "slowest": [{"path": r["path"], "time_ms": r["time_ms"]} for r in slowest[:SLOWEST_LISTED]],
    }
