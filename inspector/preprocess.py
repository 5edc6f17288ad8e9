"""The one preprocessing path: decode, colour order, resize, scale.

Training, evaluation, the export parity check and the runtime all call these functions, so an image is
turned into model input in exactly one way (the exported graph itself does any mean/std normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from inspector.errors import ImageReadError
from inspector.imagesize import declared_size
from inspector.io import IMAGE_EXTENSIONS, NotRegularFileError, display_path, is_image_name, read_regular_file  # noqa: F401 - part of the preprocessing vocabulary

#: Images declaring more pixels than this are refused before decoding (``--max-megapixels`` changes it):
#: a few dozen bytes can declare gigapixels, which the decoder would allocate.
DEFAULT_MAX_PIXELS = 100_000_000


def decode_image(
    data: bytes | np.ndarray, source: str = "<bytes>", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode encoded image bytes into an RGB ``uint8`` array of shape ``[H, W, 3]``.

    Grayscale, palette and RGBA images become RGB (alpha is dropped), 16-bit images are scaled to 8 bits,
    and the EXIF orientation of JPEGs is applied. The size the header declares is checked against
    ``max_pixels`` (None: no limit) before anything is decoded.

    Raises:
        ImageReadError: the bytes are empty, not an image format we know, declare more than ``max_pixels``
            pixels, or do not decode.
    """
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    buffer = np.ascontiguousarray(buffer, dtype=np.uint8).reshape(-1)
    if buffer.size == 0:
        raise ImageReadError(f"{source}: empty file (0 bytes)")
    header = declared_size(memoryview(buffer))
    if header is None:
        raise ImageReadError(f"{source}: not a decodable image (not an image format inspector reads)")
    if header.pixels is None:
        raise ImageReadError(f"{source}: not a decodable image ({header.format} header truncated or corrupt)")
    if max_pixels is not None and header.pixels > max_pixels:
        raise ImageReadError(
            f"{source}: {header.format} of {header.width}x{header.height} = {header.pixels / 1e6:.1f} megapixels "
            f"exceeds the limit of {max_pixels / 1e6:g} (--max-megapixels); not decoded"
        )
    # IMREAD_COLOR applies the EXIF orientation and turns gray/palette/alpha into 3 channels;
    # IMREAD_ANYDEPTH keeps 16-bit data so that it is scaled here rather than truncated.
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as error:
        raise ImageReadError(f"{source}: not a decodable image ({_first_line(error)})") from None
    if image is None:
        raise ImageReadError(f"{source}: not a decodable image (truncated, corrupt or unsupported format)")
    return to_uint8_rgb(image, bgr=True)


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB ``uint8`` ``[H, W, 3]`` (non-ASCII paths work on every platform).

    Only regular files are read (links followed): a directory, FIFO or device is refused without blocking.

    Raises:
        ImageReadError: the path is missing, not a regular file, empty, too large (``max_pixels``) or not a
            decodable image; the message names the file and the reason.
    """
    source = display_path(path)
    try:
        data = read_regular_file(path)
    except NotRegularFileError as error:
        raise ImageReadError(str(error)) from None
    except OSError as error:
        raise ImageReadError(f"{source}: cannot be read ({error.strerror or error})") from None
    return decode_image(data, source=source, max_pixels=max_pixels)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def to_uint8_rgb(image: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Bring an array of any depth and channel count to RGB ``uint8`` ``[H, W, 3]``.

    ``bgr`` says that a 3- or 4-channel input is in OpenCV's BGR order (decoded files, camera frames).
    """
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    image = np.ascontiguousarray(image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    # cv2.cvtColor rather than numpy fancy indexing: about 4x cheaper per image, and it always copies.
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image.copy()
    raise ImageReadError(f"images with {channels} channels are not supported (1, 3 or 4 expected)")


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize an ``[H, W, C]`` or ``[H, W]`` array to ``size`` = (height, width), whole (no crop).

    Shrinking uses area averaging (antialiased), enlarging bilinear interpolation.
    """
    height, width = int(size[0]), int(size[1])
    if image.shape[0] == height and image.shape[1] == width:
        return image
    shrinking = image.shape[0] > height or image.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    if image.ndim == 3 and resized.ndim == 2:
        resized = resized[:, :, None]
    return resized


def to_model_input(image: np.ndarray, size: Sequence[int], channels: int) -> np.ndarray:
    """Turn one RGB ``uint8`` ``[H, W, 3]`` image into float32 ``[C, H, W]`` in [0, 1] at ``size``.

    ``channels`` 1 converts to gray (ITU-R BT.601 luma), 3 keeps RGB.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    resized = resize_image(image, size)
    if channels == 1:
        gray = cv2.cvtColor(np.ascontiguousarray(resized), cv2.COLOR_RGB2GRAY)
        return (gray[None, :, :].astype(np.float32)) / 255.0
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / 255.0


def prepare_batch(images: Sequence[np.ndarray], size: Sequence[int], channels: int) -> np.ndarray:
    """Stack RGB ``uint8`` images of any sizes into model input float32 ``[N, C, H, W]`` in [0, 1].

    Example:
        >>> batch = prepare_batch([read_image("part.png")], size=(128, 128), channels=3)
    """
    if len(images) == 0:
        return np.zeros((0, channels, int(size[0]), int(size[1])), dtype=np.float32)
    return np.stack([to_model_input(image, size, channels) for image in images])


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a float ``[h, w]`` anomaly map onto an original image of ``height`` × ``width``.

    The model input is the whole image resized (never cropped), so a plain bilinear resize of the map
    lines up exactly with the original pixels.
    """
    if anomaly_map.shape == (height, width):
        return anomaly_map.astype(np.float32, copy=False)
    return cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
