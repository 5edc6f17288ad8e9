"""Read and replace an ONNX model's ``metadata_props`` without the ``onnx`` package (torch-free, onnx-free).

An ONNX file is one protobuf ``ModelProto`` message. Its ``metadata_props`` (field 14) is a repeated
``StringStringEntryProto`` (``key`` = field 1, ``value`` = field 2). Protobuf's wire format lets a reader
skip any field without knowing its schema, and a repeated field's entries may sit anywhere in a message.
So replacing one entry needs no schema: copy every top-level field except the entries with that key, and
append the new entry. The graph, its weights and every other field are copied byte for byte.

This is what lets ``inspector calibrate`` rewrite a model's calibration on the base install (numpy,
OpenCV, onnxruntime): the ``onnx`` package and its generated protobuf classes come with the ``train``
extra only. ``inspector.export`` writes its metadata through this module too (``export/writer.py``), so
there is one writer; ``onnx.load`` and onnxruntime read its files (``tests/test_calibrate_onnx.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

from inspector.errors import InspectorError

#: ``ModelProto.metadata_props``; ``StringStringEntryProto.key`` and ``.value``.
METADATA_PROPS_FIELD = 14
_KEY_FIELD = 1
_VALUE_FIELD = 2
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class NotAnOnnxModelError(InspectorError):
    """Bytes that are not a protobuf message this reader can walk."""


def read_metadata_props(model: bytes) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict (a later entry with the same key wins, as in onnxruntime).

    Raises:
        NotAnOnnxModelError: the bytes are not a well-formed protobuf message.
    """
    props: dict[str, str] = {}
    for number, wire_type, start, end, _ in _fields(model):
        if number == METADATA_PROPS_FIELD and wire_type == _LENGTH_DELIMITED:
            key, value = _entry(model, start, end)
            props[key] = value
    return props


def replace_metadata_prop(model: bytes, key: str, value: str) -> bytes:
    """The model with its ``metadata_props`` entry ``key`` set to ``value`` (earlier entries of that key
    removed, every other byte of the model kept).

    Raises:
        NotAnOnnxModelError: the bytes are not a well-formed protobuf message.

    Example:
        >>> data = replace_metadata_prop(Path("model.onnx").read_bytes(), "inspector", metadata.to_json())
    """
    kept = bytearray()
    for number, wire_type, start, end, field_start in _fields(model):
        if number == METADATA_PROPS_FIELD and wire_type == _LENGTH_DELIMITED:
            if _entry(model, start, end)[0] == key:
                continue
        kept += model[field_start:end]
    entry = _string_field(_KEY_FIELD, key) + _string_field(_VALUE_FIELD, value)
    kept += _varint((METADATA_PROPS_FIELD << 3) | _LENGTH_DELIMITED) + _varint(len(entry)) + entry
    return bytes(kept)


def _fields(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """Each top-level field as (number, wire type, value start, value end, field start)."""
    position, size = 0, len(data)
    if size == 0:
        raise NotAnOnnxModelError("empty file: not an ONNX model")
    while position < size:
        field_start = position
        tag, position = _read_varint(data, position)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise NotAnOnnxModelError("not an ONNX model (a protobuf field numbered 0)")
        if wire_type == _VARINT:
            start = position
            _, position = _read_varint(data, position)
        elif wire_type == _FIXED64:
            start, position = position, position + 8
        elif wire_type == _FIXED32:
            start, position = position, position + 4
        elif wire_type == _LENGTH_DELIMITED:
            length, start = _read_varint(data, position)
            position = start + length
        else:  # groups (3, 4) are not used by ONNX; 6 and 7 do not exist
            raise NotAnOnnxModelError(f"not an ONNX model (protobuf wire type {wire_type})")
        if position > size:
            raise NotAnOnnxModelError("not an ONNX model, or a truncated one (a field runs past the end)")
        yield number, wire_type, start, position, field_start


def _entry(data: bytes, start: int, end: int) -> tuple[str, str]:
    """The (key, value) of a ``StringStringEntryProto`` stored in ``data[start:end]``."""
    message = data[start:end]
    values = {_KEY_FIELD: "", _VALUE_FIELD: ""}
    for number, wire_type, value_start, value_end, _ in _fields(message) if message else ():
        if number in values and wire_type == _LENGTH_DELIMITED:
            try:
                values[number] = message[value_start:value_end].decode("utf-8")
            except UnicodeDecodeError:
                raise NotAnOnnxModelError("a metadata_props entry is not UTF-8 text") from None
    return values[_KEY_FIELD], values[_VALUE_FIELD]


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise NotAnOnnxModelError("not an ONNX model, or a truncated one (a varint runs past the end)")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string_field(number: int, text: str) -> bytes:
    encoded = text.encode("utf-8")
    return _varint((number << 3) | _LENGTH_DELIMITED) + _varint(len(encoded)) + encoded
