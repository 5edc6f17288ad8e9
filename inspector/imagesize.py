"""An image's size as its header declares it, read before anything is decoded.

Decoders allocate what the header declares, so a 74-byte PNG that claims 60000 x 60000 pixels is checked
here, against a pixel limit, before OpenCV sees it. Covers every format OpenCV reads from the image
extensions we list (PNG, JPEG, BMP, TIFF and BigTIFF, WebP, PNM/PAM/PFM, JPEG 2000) plus GIF, Sun raster
and Radiance HDR.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DeclaredSize:
    """The format's name and the size its header declares; ``width``/``height`` are None when the file
    ends (or is corrupt) before the size."""

    format: str
    width: int | None
    height: int | None

    @property
    def pixels(self) -> int | None:
        return None if self.width is None or self.height is None else self.width * self.height


def declared_size(data: bytes | memoryview) -> DeclaredSize | None:
    """The size the header of encoded image ``data`` declares; None for a format not recognised here."""
    head = bytes(data[:16])
    for name, matches, reader in _FORMATS:
        if matches(head):
            try:
                size = reader(data)
            except (struct.error, IndexError, ValueError):
                size = None
            width, height = size if size else (None, None)
            return DeclaredSize(name, width, height)
    return None


def _u16(data, offset: int, order: str = ">") -> int:
    return struct.unpack_from(order + "H", data, offset)[0]


def _u32(data, offset: int, order: str = ">") -> int:
    return struct.unpack_from(order + "I", data, offset)[0]


def _png(data) -> tuple[int, int] | None:
    if bytes(data[12:16]) != b"IHDR":
        return None
    return _u32(data, 16), _u32(data, 20)


# Start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data) -> tuple[int, int] | None:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            offset += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if marker in _JPEG_FRAMES:
            return _u16(data, offset + 7), _u16(data, offset + 5)
        offset += 2 + _u16(data, offset + 2)
    return None


def _bmp(data) -> tuple[int, int]:
    if _u32(data, 14, "<") == 12:  # OS/2 BITMAPCOREHEADER
        return _u16(data, 18, "<"), _u16(data, 20, "<")
    width, height = struct.unpack_from("<ii", data, 18)
    return abs(width), abs(height)


def _gif(data) -> tuple[int, int]:
    return _u16(data, 6, "<"), _u16(data, 8, "<")


def _tiff(data) -> tuple[int, int] | None:
    order = "<" if bytes(data[:2]) == b"II" else ">"
    big = _u16(data, 2, order) == 43
    if big:
        offset = struct.unpack_from(order + "Q", data, 8)[0]
        count = struct.unpack_from(order + "Q", data, offset)[0]
        start, entry_size, value_at = offset + 8, 20, 12
    else:
        offset = _u32(data, 4, order)
        count = _u16(data, offset, order)
        start, entry_size, value_at = offset + 2, 12, 8
    found: dict[int, int] = {}
    for index in range(min(count, 4096)):
        entry = start + index * entry_size
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257):
            formats = {3: "H", 4: "I", 16: "Q"}
            if kind not in formats:
                return None
            found[tag] = struct.unpack_from(order + formats[kind], data, entry + value_at)[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _webp(data) -> tuple[int, int] | None:
    chunk = bytes(data[12:16])
    if chunk == b"VP8 ":
        return _u16(data, 26, "<") & 0x3FFF, _u16(data, 28, "<") & 0x3FFF
    if chunk == b"VP8L":
        bits = _u32(data, 21, "<")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(bytes(data[24:27]), "little") + 1
        height = int.from_bytes(bytes(data[27:30]), "little") + 1
        return width, height
    return None


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*(\S+)")


def _pnm(data) -> tuple[int, int] | None:
    header = bytes(data[:65536])
    if header[1:2] == b"7":  # PAM: WIDTH and HEIGHT lines before ENDHDR
        fields = dict(re.findall(rb"^(WIDTH|HEIGHT)\s+(\d+)", header.split(b"ENDHDR")[0], re.MULTILINE))
        return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    tokens = []
    position = 2
    while len(tokens) < 2:
        match = _PNM_TOKEN.match(header, position)
        if not match:
            return None
        tokens.append(int(match.group(1)))
        position = match.end()
    return tokens[0], tokens[1]


def _jpeg2000(data) -> tuple[int, int] | None:
    if bytes(data[:4]) == b"\xff\x4f\xff\x51":  # raw codestream: the SIZ marker segment
        return _u32(data, 8) - _u32(data, 16), _u32(data, 12) - _u32(data, 20)
    offset = 0
    while offset + 8 <= len(data):  # JP2 boxes: the image header box sits inside the jp2h box
        length, kind = _u32(data, offset), bytes(data[offset + 4 : offset + 8])
        header = 8
        if length == 1:
            length, header = struct.unpack_from(">Q", data, offset + 8)[0], 16
        elif length == 0:
            length = len(data) - offset
        if kind == b"jp2h":
            offset += header
            continue
        if kind == b"ihdr":
            return _u32(data, offset + header + 4), _u32(data, offset + header)
        if length < header:
            return None
        offset += length
    return None


def _sun_raster(data) -> tuple[int, int]:
    return _u32(data, 4), _u32(data, 8)


def _radiance(data) -> tuple[int, int] | None:
    match = re.search(rb"\n\n([-+])([XY]) (\d+) ([-+])([XY]) (\d+)", bytes(data[:65536]))
    if not match:
        return None
    first, second = int(match.group(3)), int(match.group(6))
    return (second, first) if match.group(2) == b"Y" else (first, second)


_FORMATS: tuple[tuple[str, Callable[[bytes], bool], Callable], ...] = (
    ("PNG", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"), _png),
    ("JPEG", lambda head: head.startswith(b"\xff\xd8"), _jpeg),
    ("BMP", lambda head: head.startswith(b"BM"), _bmp),
    ("GIF", lambda head: head[:6] in (b"GIF87a", b"GIF89a"), _gif),
    ("TIFF", lambda head: head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff),
    ("WebP", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP", _webp),
    ("PNM", lambda head: head[:1] == b"P" and head[1:2] in b"1234567fF" and len(head) > 2, _pnm),
    (
        "JPEG 2000",
        lambda head: head.startswith(b"\xff\x4f\xff\x51") or head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n",
        _jpeg2000,
    ),
    ("Sun raster", lambda head: head[:4] == b"\x59\xa6\x6a\x95", _sun_raster),
    ("Radiance HDR", lambda head: head.startswith((b"#?RADIANCE", b"#?RGBE")), _radiance),
)
