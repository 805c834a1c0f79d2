"""Where predict reads frames from: an image, a folder of images, a video file or a camera.

Every source yields :class:`Frame` objects holding a BGR ``(h, w, 3)`` uint8 image (OpenCV's
order; the predictor converts), so images, videos and cameras go through the same pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from yoloslim.data.images import IMG_EXTS, is_image, read_image
from yoloslim.errors import UserError
from yoloslim.log import logger

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".wmv", ".mpeg", ".mpg", ".webm", ".flv", ".ts")


@dataclass
class Frame:
    """One picture from a source.

    Attributes:
        img: BGR uint8 ``(h, w, 3)``.
        name: file name of the image or video it came from (``camera0`` for a camera).
        index: frame number within a video or camera stream; 0 for images.
    """

    img: np.ndarray
    name: str
    index: int = 0


class Source:
    """An iterable of frames with what the writer needs to know about it.

    Attributes:
        kind: ``"image"`` (a file or a folder of them), ``"video"`` or ``"camera"``.
        name: the source as the user gave it.
        total: number of frames when known (images, video files), else None.
        fps: frame rate of a video (0 when unknown or not a video).
        stem: file name of a video, ``cameraN`` for a camera, empty for images.
    """

    def __init__(self, kind: str, name: str, images: list[Path] | None = None,
                 capture: cv2.VideoCapture | None = None, stem: str = "") -> None:
        self.kind = kind
        self.name = name
        self._images = images or []
        self._cap = capture
        self.stem = stem
        self.fps = 0.0
        self.total: int | None = len(self._images) if kind == "image" else None
        if capture is not None:
            self.fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.total = count if kind == "video" and count > 0 else None

    def __iter__(self) -> Iterator[Frame]:
        if self.kind == "image":
            for path in self._images:
                img = read_image(path)
                if img is None:
                    logger.warning(f"{path}: cannot be decoded as an image; skipped")
                    continue
                yield Frame(img, path.name)
            return
        i = 0
        try:
            while True:
                ok, img = self._cap.read()
                if not ok or img is None:
                    break
                yield Frame(img, self.stem, i)
                i += 1
        finally:
            self.close()

    def close(self) -> None:
        """Release a video file or camera."""
        if self._cap is not None:
            self._cap.release()


def open_source(source: str | int) -> Source:
    """Open what ``--source`` names: an image file, a folder, a video file or a camera id.

    A folder yields its image files (any case of the suffixes in ``IMG_EXTS``, not recursive,
    sorted by name). A camera id is a whole number that is not an existing file's name.

    Raises:
        UserError: nothing by that name, an unknown file type, no images in a folder, or a video
            or camera that cannot be opened.
    """
    text = str(source)
    path = Path(text)
    if not path.exists() and text.strip().isdigit():
        cam = int(text)
        cap = _quietly(cv2.VideoCapture, cam)
        if not cap.isOpened():
            raise UserError(f"camera {cam} cannot be opened (no such device, or it is busy)")
        return Source("camera", text, capture=cap, stem=f"camera{cam}")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and is_image(p))
        if not images:
            raise UserError(f"{path}: no images in this folder (looked for {', '.join(IMG_EXTS)}, any case)")
        return Source("image", text, images=images)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in IMG_EXTS:
            if read_image(path) is None:
                raise UserError(f"{path}: cannot be decoded as an image")
            return Source("image", text, images=[path])
        if suffix in VIDEO_EXTS:
            cap = _quietly(cv2.VideoCapture, str(path))
            if not cap.isOpened():
                raise UserError(f"{path}: cannot be opened as a video")
            return Source("video", text, capture=cap, stem=path.name)
        raise UserError(f"{path}: not an image or video file; images: {', '.join(IMG_EXTS)}; "
                        f"videos: {', '.join(VIDEO_EXTS)}")
    raise UserError(f"{text}: no such image, folder, video or camera id")


def _quietly(fn, *args):
    """Call an OpenCV function with its own warnings (``[ WARN:0] ... can't open camera``) silenced."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        return fn(*args)
    finally:
        cv2.utils.logging.setLogLevel(level)
