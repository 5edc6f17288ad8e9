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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def write_png_bomb(path: Path, width: int, height: int, valid: bool = False) -> Path:
    """A 1-bit gray PNG declaring ``width`` x ``height`` pixels: only the header (``valid`` False, under 100
    bytes) or the whole image of zeros, which deflate squeezes about a thousandfold."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if valid:
        packer = zlib.compressobj(9)
        row = b"\x00" * (1 + (width + 7) // 8)
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    else:
        data = zlib.compress(b"\x00" * 16)
    signature = b"\x89PNG\r\n\x1a\n"
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
    Path(path).write_bytes(signature + body)
    return Path(path)


def write_gray_alpha_png(path: Path, gray: np.ndarray, alpha: int = 255) -> Path:
    """An 8-bit gray + alpha PNG (colour type 4): two channels per pixel."""
    height, width = gray.shape
    pixels = np.dstack([gray, np.full_like(gray, alpha)]).astype(np.uint8)
    rows = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 4, 0, 0, 0)
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b"")
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return Path(path)


def write_cmyk_tiff(path: Path, rgb: np.ndarray) -> Path:
    """An uncompressed CMYK TIFF (photometric 5, four samples per pixel) showing ``rgb``."""
    height, width = rgb.shape[:2]
    cmy = 255 - rgb.astype(np.int32)
    black = cmy.min(axis=2, keepdims=True)
    pixels = np.concatenate([cmy - black, black], axis=2).astype(np.uint8).tobytes()
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),  # bits per sample (the same for all four: one value is read as that)
        (259, 3, 1),  # no compression
        (262, 3, 5),  # photometric: separated (CMYK)
        (273, 4, 0),  # strip offset, filled in below
        (277, 3, 4),  # samples per pixel
        (278, 4, height),  # rows per strip
        (279, 4, len(pixels)),  # strip byte count
        (284, 3, 1),  # planar configuration: chunky
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    ifd += struct.pack("<I", 0)
    Path(path).write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + pixels)
    return Path(path)


def textured_images(count: int, size: tuple[int, int] = (40, 48)) -> list[np.ndarray]:
    """RGB uint8 images of stripes and blobs, larger than the model input so the resize is exercised."""
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    images = []
    for index in range(count):
        stripes = 127 + 100 * np.sin(cols / (2 + index) + rows / 7)
        blob = 80 * np.exp(-((rows - rng.integers(size[0])) ** 2 + (cols - rng.integers(size[1])) ** 2) / 40)
        channels = [stripes + blob, stripes[::-1] * 0.8, np.full(size, 60 + 20 * index)]
        images.append(np.clip(np.stack(channels, axis=2), 0, 255).astype(np.uint8))
    return images
