"""Image files: which suffixes count, reading with OpenCV, and a cheap check for corrupt or truncated files.

Images are read with ``cv2.IMREAD_IGNORE_ORIENTATION``: pixels stay in the stored grid, the grid the
header sizes and the annotation tools' boxes refer to.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

# Suffixes compared in lower case, so `.JPG` and `.Png` count too.
IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
# Images whose header claims more pixels are refused before decoding (a decompression bomb: a small
# file that decodes to gigabytes). 2**28 px is 16k x 16k, 0.8 GB as BGR; OpenCV's own limit is 2**30.
MAX_IMAGE_PIXELS = 1 << 28


def is_image(path: Path) -> bool:
    """True when the file name ends in an image suffix (any case)."""
    return path.suffix.lower() in IMG_EXTS


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))


def read_image(path: str | Path) -> np.ndarray | None:
    """The image as BGR uint8 ``(h, w, 3)``, or ``None`` when it cannot be decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0 or _too_large(_header_size(data[:64 * 1024].tobytes(), Path(path))):
        return None
    return cv2.imdecode(data, _READ_FLAGS)


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the file header (JPEG, PNG, BMP) or by decoding; ``None`` if unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return None
    size = _header_size(head, path)
    if size is None:
        img = read_image(path)
        return None if img is None else (img.shape[1], img.shape[0])
    return size


def verify_image(path: Path, decode: bool = False) -> str | None:
    """What is wrong with an image file (``"missing"``, ``"truncated"``, ...) or ``None`` when it looks fine.

    Without ``decode`` only the header and the end of the file are read (microseconds per file); with it
    the whole image is decoded as well.
    """
    if not path.is_file():
        return "image file missing"
    nbytes = path.stat().st_size
    if nbytes == 0:
        return "empty image file"
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
        f.seek(max(0, nbytes - 64))
        tail = f.read()
    kind = _kind(head)
    if kind == "jpeg" and not tail.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"
    if kind == "png" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    if kind == "bmp" and len(head) >= 6:
        declared = struct.unpack("<I", head[2:6])[0]
        if declared and nbytes < declared:
            return f"truncated BMP ({nbytes} of {declared} bytes)"
    size = _header_size(head, path) if kind is not None else None
    if kind is not None and size is None:
        return "corrupt image header"
    if _too_large(size):
        return f"image of {size[0]}x{size[1]} pixels, more than {MAX_IMAGE_PIXELS:,} (refused)"
    if kind is None or decode:
        img = read_image(path)
        if img is None or img.size == 0:
            return "corrupt image (cannot be decoded)"
    return None


def _too_large(size: tuple[int, int] | None) -> bool:
    return size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS


def _kind(head: bytes) -> str | None:
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:2] == b"BM":
        return "bmp"
    return None


def _header_size(head: bytes, path: Path) -> tuple[int, int] | None:
    kind = _kind(head)
    try:
        if kind == "png" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return (w, h) if w > 0 and h > 0 else None
        if kind == "bmp":
            w, h = struct.unpack("<ii", head[18:26])
            return (w, abs(h)) if w > 0 and h != 0 else None
        if kind == "jpeg":
            return _jpeg_size(head) or _jpeg_size(path.read_bytes())
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first start-of-frame marker of a JPEG stream."""
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return (w, h) if w > 0 and h > 0 else None
        i += 2 + length
    return None
