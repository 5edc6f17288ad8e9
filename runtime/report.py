"""The inspection report: a CSV and a JSONL file written one line per image as it goes.

Each record is written as whole lines, unbuffered, so a crash or Ctrl-C loses at most the images still
in flight; a write that fails (a full disk) is undone in both files, which keeps them in step.
``resume`` reads the JSONL report back, drops a torn last line, rewrites both files from the intact
records and appends from there.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from inspector.errors import InspectorError
from inspector.io import atomic_write_text, display_path

CSV_NAME = "report.csv"
JSONL_NAME = "report.jsonl"
CSV_COLUMNS = (
    "path",
    "status",
    "label",
    "score",
    "raw_score",
    "width",
    "height",
    "n_regions",
    "regions",
    "time_ms",
    "overlay",
    "mask",
    "error",
)


class Report:
    """Append-only CSV + JSONL report in ``out_dir``; ``previous`` holds the records of a resumed run."""

    def __init__(self, out_dir: str | Path, resume: bool = False, force: bool = False):
        self.out_dir = Path(out_dir)
        self.csv_path = self.out_dir / CSV_NAME
        self.jsonl_path = self.out_dir / JSONL_NAME
        self.previous: dict[str, dict[str, Any]] = {}
        exists = self.jsonl_path.exists() or self.csv_path.exists()
        if exists and not (resume or force):
            raise InspectorError(
                f"{display_path(self.out_dir)}: a report is already there; use --resume to continue it or "
                "--force to start over"
            )
        if resume and self.jsonl_path.exists():
            self.previous = {record["path"]: record for record in read_records(self.jsonl_path)}
        # Rewriting from the intact records repairs a torn line and brings the CSV in step with the JSONL.
        atomic_write_text(self.jsonl_path, "".join(_jsonl_line(r) for r in self.previous.values()))
        atomic_write_text(
            self.csv_path, _csv_lines([_csv_row(None)] + [_csv_row(r) for r in self.previous.values()])
        )
        # Held open for the whole run (closed by close()): one unbuffered append per image.
        self._jsonl = open(self.jsonl_path, "ab", buffering=0)  # noqa: SIM115
        self._csv = open(self.csv_path, "ab", buffering=0)  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        """Append one image's record to both files, or to neither.

        Raises:
            OSError: naming the report file (a full disk, an I/O error); what this record had written to
                either file is cut off again.
        """
        lines = ((self._jsonl, _jsonl_line(record)), (self._csv, _csv_lines([_csv_row(record)])))
        sizes = [os.fstat(handle.fileno()).st_size for handle, _ in lines]
        for handle, text in lines:
            try:
                data = text.encode("utf-8")
                while data:
                    data = data[handle.write(data) :]
            except OSError as error:
                for (written, _), size in zip(lines, sizes, strict=True):
                    os.ftruncate(written.fileno(), size)
                raise OSError(error.errno, error.strerror, handle.name) from error

    def close(self) -> OSError | None:
        """Sync and close both files; returns the first error instead of raising it (the caller may be
        reporting an earlier one)."""
        first: OSError | None = None
        for handle in (self._csv, self._jsonl):
            if handle.closed:
                continue
            try:
                os.fsync(handle.fileno())
            except OSError as error:
                first = first or OSError(error.errno, error.strerror, handle.name)
            handle.close()
        return first


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The intact records of a JSONL report (a torn or garbled line is skipped)."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # the last line was cut off mid-write
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "path" in record:
                records.append(record)
    return records


def _jsonl_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _csv_row(record: dict[str, Any] | None) -> list[Any]:
    if record is None:
        return list(CSV_COLUMNS)
    row = dict(record, n_regions=len(record.get("regions") or []))
    row["regions"] = json.dumps(record.get("regions") or [], separators=(",", ":"))
    return ["" if row.get(column) is None else row.get(column) for column in CSV_COLUMNS]


def _csv_lines(rows: Iterable[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()
