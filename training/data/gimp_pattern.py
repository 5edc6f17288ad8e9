"""Reader for GIMP pattern files (``.pat``), the format GIMP and Krita ship their textures in.

A ``.pat`` file is a big-endian header of ``uint32`` fields, a name and the raw pixels::

    header_size, version (1), width, height, bytes_per_pixel (1-4), magic 'GPAT'
    name: UTF-8, NUL-terminated, filling the header up to header_size
    pixels: width * height * bytes_per_pixel bytes, row by row

Bytes per pixel: 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from inspector.errors import InspectorError

PATTERN_EXTENSION = ".pat"
_MAGIC = b"GPAT"
_FIELDS = struct.Struct(">5I4s")
#: Larger than any real pattern: guards against a corrupt header asking for gigabytes.
_MAX_SIDE = 16384


def is_pattern_name(path: str | Path) -> bool:
    """True when the file name ends in ``.pat`` (any case)."""
    return Path(path).suffix.lower() == PATTERN_EXTENSION


def read_gimp_pattern(path: str | Path) -> np.ndarray:
    """Read a GIMP ``.pat`` file as RGB ``uint8`` ``[H, W, 3]``.

    Gray patterns are expanded to three equal channels; an alpha channel is composited on white (the
    way the patterns look on GIMP's default canvas).

    Raises:
        InspectorError: the file is missing, not a pattern, or shorter than its header says.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InspectorError(f"{path}: cannot be read ({error.strerror or error})") from None
    return decode_gimp_pattern(data, source=str(path))


def decode_gimp_pattern(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of a ``.pat`` file (see :func:`read_gimp_pattern`)."""
    if len(data) < _FIELDS.size:
        raise InspectorError(f"{source}: not a GIMP pattern (file too short for the header)")
    header_size, version, width, height, channels, magic = _FIELDS.unpack_from(data)
    if magic != _MAGIC:
        raise InspectorError(f"{source}: not a GIMP pattern (no 'GPAT' magic)")
    if version != 1:
        raise InspectorError(f"{source}: GIMP pattern version {version} is not supported (1 expected)")
    if not 1 <= channels <= 4:
        raise InspectorError(f"{source}: GIMP pattern with {channels} bytes per pixel (1 to 4 expected)")
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise InspectorError(f"{source}: GIMP pattern size {width}x{height} is not plausible")
    if header_size < _FIELDS.size or header_size > len(data):
        raise InspectorError(f"{source}: GIMP pattern header size {header_size} is invalid")
    expected = width * height * channels
    if len(data) - header_size < expected:
        raise InspectorError(
            f"{source}: truncated GIMP pattern ({len(data) - header_size} of {expected} pixel bytes)"
        )
    pixels = np.frombuffer(data, np.uint8, count=expected, offset=header_size)
    pixels = pixels.reshape(height, width, channels)
    colour = pixels[:, :, :3] if channels >= 3 else np.repeat(pixels[:, :, :1], 3, axis=2)
    if channels in (2, 4):
        alpha = pixels[:, :, -1:].astype(np.float32) / 255.0
        composited = colour.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return (composited + 0.5).astype(np.uint8)
    return np.ascontiguousarray(colour)


def encode_gimp_pattern(image: np.ndarray, name: str = "pattern") -> bytes:
    """The bytes of a ``.pat`` file holding ``image`` (``uint8`` ``[H, W]`` or ``[H, W, 1-4]``)."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    height, width, channels = image.shape
    encoded_name = name.encode("utf-8") + b"\0"
    header = _FIELDS.pack(_FIELDS.size + len(encoded_name), 1, width, height, channels, _MAGIC)
    return header + encoded_name + np.ascontiguousarray(image).tobytes()
