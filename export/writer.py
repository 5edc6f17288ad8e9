"""Exported graphs' metadata, written into ``metadata_props``.

Files are written by :func:`inspector.io.atomic_write_bytes`: a crash or Ctrl-C leaves either the previous
file or the new one, never a half-written ``model.onnx``.
"""

from __future__ import annotations

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
