"""Exported graphs' metadata, written into ``metadata_props``.

Files are written by :func:`inspector.io.atomic_write_bytes`: a crash or Ctrl-C leaves either the previous
file or the new one, never a half-written ``model.onnx``.
"""

from __future__ import annotations

from inspector.onnx_metadata import replace_metadata_prop

#: Metadata key of component files (the full model uses ``inspector.artifact.METADATA_KEY``).
COMPONENT_METADATA_KEY = "inspector_component"


def with_metadata(onnx_bytes: bytes, values: dict[str, str]) -> bytes:
    """The model with ``values`` set in its ``metadata_props`` (existing keys replaced), through
    :func:`inspector.onnx_metadata.replace_metadata_prop`, the writer ``inspector calibrate`` uses too."""
    for key, value in values.items():
        onnx_bytes = replace_metadata_prop(onnx_bytes, key, value)
    return onnx_bytes
