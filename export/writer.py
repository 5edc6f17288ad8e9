"""Writing exported graphs: metadata into ``metadata_props``, and files that are whole or absent.

A model file is written to a temporary file in the destination folder, flushed to disk, then renamed over
the final name with :func:`os.replace` (atomic on POSIX and Windows): a crash or Ctrl-C leaves either the
previous file or the new one, never a half-written ``model.onnx``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

#: Metadata key of component files (the full model uses ``inspector.artifact.METADATA_KEY``).
COMPONENT_METADATA_KEY = "inspector_component"


def with_metadata(onnx_bytes: bytes, values: dict[str, str]) -> bytes:
    """The model with ``values`` set in its ``metadata_props`` (existing keys replaced)."""
    model = onnx.load_from_string(onnx_bytes)
    kept = [prop for prop in model.metadata_props if prop.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return model.SerializeToString()


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
