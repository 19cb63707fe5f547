"""Image loading and LLaVA-1.5 preprocessing: pad to square with the mean colour, then resize,
crop and normalise. build_llava gives the model a LlavaImageProcessor with do_pad=True, which
pads itself (so plain transformers users of a merged model preprocess identically); any other
image processor gets the padding done here first."""
from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Optional, Union

import torch
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image that is missing or cannot be decoded."""


def load_image(path: Union[str, Path]) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"cannot read image {path}: {error}") from None


def decode_image(data: bytes, what: str) -> Image.Image:
    """An image from its encoded bytes (PNG, JPEG, ...), as RGB; `what` names it in errors."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"cannot decode the image bytes of {what}: {error}") from None


def inline_bytes(value: str, what: str) -> bytes:
    """The bytes of an image given inline as base64 or a data URI."""
    try:
        return base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value, validate=False)
    except (binascii.Error, ValueError, IndexError) as error:
        raise ImageError(f"{what}: not valid base64 ({error})") from None


def stored_bytes(image) -> bytes:
    """The encoded bytes of an image stored in the data: inline base64 / a data URI, or a
    tables.TableImage reference into a memory-mapped table."""
    from .tables import TableImage, stored_image

    if isinstance(image, TableImage):
        stored = stored_image(image)
        if stored is None:
            raise ImageError(f"no image stored at {image}")
        return inline_bytes(stored, str(image)) if isinstance(stored, str) else stored
    return inline_bytes(image, "an inline image")


def describe(image) -> str:
    """How error messages name an image: its path, or where in the data it is stored."""
    from .tables import is_inline

    return "an inline (base64) image" if isinstance(image, str) and is_inline(image) else str(image)


def open_image(image, image_folder: Optional[Union[str, Path]] = None) -> Image.Image:
    """A sample's image as RGB, wherever it is: a path (relative to `image_folder`), or stored in
    the data (see stored_bytes)."""
    from .tables import is_inline

    if isinstance(image, str) and not is_inline(image):
        return load_image(Path(image_folder) / image if image_folder is not None else Path(image))
    return decode_image(stored_bytes(image), describe(image))


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def mean_colour(image_processor) -> tuple[int, int, int]:
    return tuple(int(255 * m) for m in image_processor.image_mean)  # as LlavaImageProcessor rounds


def preprocess_image(image: Image.Image, image_processor) -> torch.Tensor:
    """(3, H, W) pixel values, as LLaVA-1.5 feeds its vision tower."""
    if not getattr(image_processor, "do_pad", False):
        image = pad_to_square(image, mean_colour(image_processor))
    return image_processor(images=image, return_tensors="pt")["pixel_values"][0]
