"""Image loading and LLaVA-1.5 preprocessing: pad to square with the mean colour, then resize,
crop and normalise. build_llava gives the model a LlavaImageProcessor with do_pad=True, which
pads itself (so plain transformers users of a merged model preprocess identically); any other
image processor gets the padding done here first."""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path
from typing import Optional, Union

from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import torch


class ImageError(ValueError):
    """An image that is missing, cannot be decoded, or is over the pixel limit."""


MAX_IMAGE_PIXELS = 64_000_000  # 64 MP: a large camera photo; LLaVA-1.5 sees 336 x 336 of any image
_limit: Optional[int] = MAX_IMAGE_PIXELS
PIXELS_HELP = (f"refuse images over this many pixels before decoding them (decompression bombs) [{MAX_IMAGE_PIXELS:,}; "
               "0: no limit]")


def set_max_image_pixels(pixels: Optional[int]) -> None:
    """The pixel limit for every image this process opens (--max_image_pixels; None or 0: none),
    ours and PIL's: any library in the process (Gradio, datasets) refuses an image over it."""
    global _limit
    _limit = pixels or None
    # PIL raises DecompressionBombError above 2 x MAX_IMAGE_PIXELS: half the limit, rounded up (an
    # odd limit rounded down would refuse an image of exactly the limit), refuses what we refuse.
    Image.MAX_IMAGE_PIXELS = None if _limit is None else (_limit + 1) // 2


# PIL warns between MAX_IMAGE_PIXELS and twice that: with its limit set to refuse at ours, the
# warning would only flag images within the limit.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
set_max_image_pixels(MAX_IMAGE_PIXELS)


def to_rgb(image: Image.Image) -> Image.Image:
    """The one conversion every path uses (training, evaluation, chat, web): the first frame of an
    animation; 16- and 32-bit greyscale scaled to 8 bits (PIL's own conversion clips them to
    white); transparency composited on white (as transformers' convert_to_rgb does); CMYK,
    palette and the rest converted by PIL."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def over_limit(what: str, pixels: float, size: str = "") -> ImageError:
    return ImageError(f"{what} is {size}{pixels / 1e6:.1f} MP, over the limit of {(_limit or 0) / 1e6:.1f} MP "
                      "(--max_image_pixels raises it); its pixels were not decoded")


def _within_limit(image: Image.Image, what: str) -> Image.Image:
    """The image, once its header says it is within the pixel limit (nothing decoded yet); still
    needed beside PIL's guard, which another library may lift (Image.MAX_IMAGE_PIXELS = None)."""
    width, height = image.size
    if _limit is not None and width * height > _limit:
        raise over_limit(what, width * height, f"{width} x {height} = ")
    return image


def read_image(source, what: str, verb: str = "read", decode: bool = True) -> Optional[Image.Image]:
    """An image from a path or file object, as RGB (to_rgb), refused over the pixel limit before
    decoding; ImageError says what is wrong, naming it as `what`. decode=False: the header's
    checks only (format, size), returning None."""
    try:
        with Image.open(source) as image:
            _within_limit(image, what)
            return to_rgb(image) if decode else None
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # PIL's guard, at our limit, read the header first
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise over_limit(what, int(found.group(1)) if found else float("nan")) from None
    except Exception as error:  # noqa: BLE001 - PIL fails in many types on a file that is no image
        raise ImageError(f"cannot {verb} {what}: {error}") from None


def load_image(path: Union[str, Path]) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    return read_image(path, f"image {path}")


def decode_image(data: bytes, what: str) -> Image.Image:
    """An image from its encoded bytes (PNG, JPEG, ...), as RGB; `what` names it in errors."""
    return read_image(io.BytesIO(data), f"the image bytes of {what}", verb="decode")


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
