"""Generated datasets written once: a category folder with a marker of the parameters that made it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inspector.errors import InspectorError

MARKER = "generated.json"


def write_generated_category(target: Path, parameters: dict[str, Any], write: Callable[[Path], None]) -> None:
    """Make ``target`` by ``write(folder)`` unless it already holds a copy made with ``parameters``.

    The category is written to a temporary folder beside it and renamed into place, so an interrupted run
    leaves no half-written category; a copy made with other parameters is replaced; a folder without the
    marker is someone else's and is refused.

    Raises:
        InspectorError: ``target`` exists and was not made by a generator.
    """
    parameters = json.loads(json.dumps(parameters))  # tuples as lists, as the marker reads back
    marker = target / MARKER
    if target.exists():
        if not marker.is_file():
            raise InspectorError(f"{target} exists and was not made by the generator; choose another folder")
        if json.loads(marker.read_text(encoding="utf-8")) == parameters:
            return
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    (partial / MARKER).write_text(json.dumps(parameters, indent=2), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    try:
        partial.rename(target)
    except OSError:
        # Another process finished the same category first: keep its copy.
        shutil.rmtree(partial, ignore_errors=True)
