"""Image loading and LLaVA-1.5 preprocessing: pad to square with the mean colour, then resize,
crop and normalise. build_llava gives the model a LlavaImageProcessor with do_pad=True, which
pads itself (so plain transformers users of a merged model preprocess identically); any other
image processor gets the padding done here first."""
from __future__ import annotations

from pathlib import Path
from typing import Union

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
