"""Decoding one image as the ELEVATER toolkit's reader does (vision-datasets' PILImageLoader: EXIF orientation,
then RGB), with 16-bit and float modes scaled instead of clipped; and :func:`import_decoders`, which a process calls
before forking DataLoader workers."""
from __future__ import annotations

import contextlib

import numpy as np


@contextlib.contextmanager
def _pillow_bomb_limit_lifted():
    """ELEVATER test sets are trusted data: an image over Pillow's decompression-bomb limit (~179 Mpx) is read, not
    refused. The limit is lifted only around the harness's own decode call and restored after."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def to_rgb(image):
    """An 8-bit RGB image from any Pillow mode. Pillow's ``convert('RGB')`` clips 16-bit and 32-bit integer
    grayscale ("I;16", "I") to 255 — a 16-bit PNG comes out pure white — and float ("F") images likewise; those
    are scaled to 8 bits here (16-bit: value / 257, i.e. 65535 -> 255; "I" whose values exceed 255 is taken as
    16-bit; "F" in [0, 1] is scaled by 255). Every other mode goes through Pillow's own conversion."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        a = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0
        elif image.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        gray = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    return image.convert("RGB")


def import_decoders() -> None:
    """Import, in this process, every module that decoding an image needs (Pillow, vision-datasets' reader, ctypes
    for releasing freed memory). Called before DataLoader workers are forked: a forked worker that imports a module
    itself can block forever on an import lock that another thread of the parent held at the moment of the fork
    (seen: training's periodic eval, a worker stuck importing vision_datasets -> requests)."""
    import ctypes  # noqa: F401

    from PIL import Image, ImageOps  # noqa: F401
    from vision_datasets.common.data_reader import FileReader, PILImageLoader  # noqa: F401


def decode_image(blob: bytes):
    """Decode image bytes as the toolkit's reader does — vision-datasets' PILImageLoader: EXIF orientation, then
    RGB — fully (a truncated file fails here, not later). One deliberate difference: PILImageLoader converts 16-bit
    images ("I;16") with Pillow's ``convert('RGB')``, which clips them to white; those modes are rotated by their
    EXIF orientation and scaled to 8 bits by :func:`to_rgb` instead."""
    import io

    from PIL import Image, ImageOps
    from vision_datasets.common.data_reader import PILImageLoader

    with _pillow_bomb_limit_lifted():
        image = Image.open(io.BytesIO(blob))
        if image.mode.startswith("I") or image.mode == "F":
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
        image = PILImageLoader.load_from_stream(io.BytesIO(blob))
        image.load()
    return to_rgb(image)
