"""Image files of every awkward kind a user's folder holds, written byte for byte (no PIL needed)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

BACKGROUND = 128  # mid-gray: the deviation model scores it as normal
SPOT = 255  # white: raw deviation 0.5, a clear defect


def part(height: int, width: int, spot: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A gray RGB part, with a white spot (x, y, width, height) when given."""
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    if spot:
        x, y, w, h = spot
        image[y : y + h, x : x + w] = SPOT
    return image


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write RGB (or single-channel / 16-bit) through OpenCV, which expects BGR."""
    data = image[:, :, ::-1] if image.ndim == 3 and image.shape[2] == 3 else image
    ok, encoded = cv2.imencode(Path(path).suffix, np.ascontiguousarray(data))
    assert ok
    Path(path).write_bytes(encoded.tobytes())
    return Path(path)


def write_exif_rotated_jpeg(path: Path, stored_rgb: np.ndarray, orientation: int = 6) -> Path:
    """A JPEG whose pixels are stored as given, with an EXIF Orientation tag telling viewers to rotate.

    Orientation 6 means "rotate 90° clockwise to display".
    """
    ok, encoded = cv2.imencode(
        ".jpg", np.ascontiguousarray(stored_rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95]
    )
    assert ok
    jpeg = encoded.tobytes()
    # Big-endian TIFF header, one IFD entry: tag 0x0112 (Orientation), type SHORT, count 1, value.
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    Path(path).write_bytes(jpeg[:2] + app1 + jpeg[2:])  # right after the SOI marker
    return Path(path)


def write_palette_png(path: Path, gray: np.ndarray) -> Path:
    """An 8-bit palette (colour type 3) PNG whose palette maps index i to gray level i."""
    height, width = gray.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    palette = bytes(value for level in range(256) for value in (level, level, level))
    rows = b"".join(b"\x00" + gray[row].astype(np.uint8).tobytes() for row in range(height))
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"PLTE", palette)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return Path(path)


def write_video(
    path: Path,
    frames: int,
    size: tuple[int, int] = (96, 128),
    fps: float = 20.0,
    defect_frames: range | None = None,
) -> Path:
    """An MJPG .avi of gray frames; ``defect_frames`` carry a white square in the right half."""
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for index in range(frames):
        spot = (
            (width * 5 // 8, height // 4, width // 4, height // 3)
            if defect_frames and index in defect_frames
            else None
        )
        writer.write(part(height, width, spot)[:, :, ::-1])
    writer.release()
    return Path(path)
