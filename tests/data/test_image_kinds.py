"""Every path reads an image the same way (data.images.read_image / to_rgb): training's dataset,
evaluation's messages, the chat and the web page give identical pixel values for 16-bit, CMYK,
palette-with-transparency, alpha and animated images; and an image over the pixel limit is
refused from its header, before decoding, with a message naming --max_image_pixels."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from llava_moslora.data import LlavaDataset, preprocess_image
from llava_moslora.data.images import ImageError, read_image, set_max_image_pixels, to_rgb
from llava_moslora.data.records import DataError
from llava_moslora.evaluation.vlm import open_rgb
from llava_moslora.model import build_llava
from llava_moslora.serve.chat import ChatSession
from llava_moslora.serve.web import open_image


def kinds(folder):
    """name -> (file, the RGB its top-left pixel must read as)."""
    grey16 = np.full((16, 20), 32768, dtype=np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    Image.new("CMYK", (20, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=100)
    palette = Image.new("P", (20, 16), 0)
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    palette.paste(1, (10, 0, 20, 16))
    palette.save(folder / "palette.png", transparency=0)
    Image.new("RGBA", (20, 16), (0, 0, 255, 0)).save(folder / "clear.png")
    Image.new("LA", (20, 16), (0, 128)).save(folder / "grey-alpha.png")
    frames = [Image.new("RGB", (20, 16), colour) for colour in ((10, 200, 10), (200, 10, 10))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    return {"grey16.png": (128, 128, 128), "cmyk.jpg": None, "palette.png": (255, 255, 255),
            "clear.png": (255, 255, 255), "grey-alpha.png": (127, 127, 127), "animated.gif": (10, 200, 10)}


def test_every_path_gives_identical_pixels_for_every_kind(tiny_bases, tmp_path):
    expected = kinds(tmp_path)
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    records = [{"id": name, "image": name, "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A colour."}]} for name in expected]
    (tmp_path / "data.json").write_text(json.dumps(records))
    data = LlavaDataset(tmp_path / "data.json", bundle.tokenizer, bundle.image_processor, "vicuna_v1",
                        num_image_tokens=bundle.recipe.num_image_tokens, image_folder=tmp_path)
    for index, (name, colour) in enumerate(expected.items()):
        path = tmp_path / name
        session = ChatSession(answerer=None)
        session.add_image(str(path))
        pictures = {"evaluation": open_rgb(str(path)), "chat": session.images[0], "web": open_image(str(path))}
        training = data[index]["pixel_values"][0]
        for where, picture in pictures.items():
            assert picture.mode == "RGB", (name, where)
            assert torch.equal(preprocess_image(picture, bundle.image_processor), training), (name, where)
        if colour is not None:
            assert pictures["chat"].getpixel((0, 0)) == colour, name
    assert open_rgb(str(tmp_path / "palette.png")).getpixel((15, 8)) == (200, 30, 30)  # the opaque half kept


def test_pil_alone_would_clip_16_bit_to_white():
    """Why to_rgb scales: PIL's own conversion of a mid-grey 16-bit image gives white."""
    image = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert image.convert("RGB").getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(image).getpixel((0, 0)) == (128, 128, 128)


@pytest.fixture
def bomb(tmp_path):
    """A 1-bit PNG of 20,000 x 20,000 pixels: about 50 KB on disk, 1.2 GB once decoded to RGB."""
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path, optimize=True)
    return path


def test_an_image_over_the_limit_is_refused_from_its_header(bomb, tmp_path, monkeypatch):
    from PIL import ImageFile

    assert bomb.stat().st_size < 200_000
    with monkeypatch.context() as patched:
        patched.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the bomb's pixels were decoded"))
        with pytest.raises(ImageError, match=r"image bomb.png is 400.0 MP, over the limit of 64.0 MP "
                                             r"\(--max_image_pixels raises it\); its pixels were not decoded"):
            read_image(bomb, "image bomb.png")
        with pytest.raises(Image.DecompressionBombError):  # any other library of the process refuses it too
            Image.open(bomb)
    Image.new("1", (8000, 7999)).save(tmp_path / "within.png")  # just under the limit: read
    assert read_image(tmp_path / "within.png", "image within.png", decode=False) is None
    Image.new("1", (8000, 8001)).save(tmp_path / "over.png")  # just over it: refused
    with pytest.raises(ImageError, match=r"64.0 MP, over the limit of 64.0 MP"):
        read_image(tmp_path / "over.png", "image over.png", decode=False)
    session = ChatSession(answerer=None)
    with pytest.raises(ImageError, match="--max_image_pixels"):
        session.add_image(str(bomb))
    assert session.images == []
    set_max_image_pixels(500_000_000)
    try:
        assert read_image(bomb, "image bomb.png", decode=False) is None  # raised: the header passes
    finally:
        set_max_image_pixels(64_000_000)


def test_training_skips_and_names_the_bomb_and_validate_data_reports_it(bomb, tiny_bases, tmp_path, capsys):
    from llava_moslora.cli import main

    Image.new("RGB", (20, 16), (1, 2, 3)).save(tmp_path / "fine.png")
    records = [{"id": image.split(".")[0], "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A colour."}]}
        for image in ("fine.png", "bomb.png")]
    (tmp_path / "data.json").write_text(json.dumps(records))
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    data = LlavaDataset(tmp_path / "data.json", bundle.tokenizer, bundle.image_processor, "vicuna_v1",
                        num_image_tokens=bundle.recipe.num_image_tokens, image_folder=tmp_path, skip_bad_samples=True)
    assert data[1]["skipped_ids"] == ["bomb"]
    strict = LlavaDataset(tmp_path / "data.json", bundle.tokenizer, bundle.image_processor, "vicuna_v1",
                          num_image_tokens=bundle.recipe.num_image_tokens, image_folder=tmp_path)
    with pytest.raises(DataError, match="'bomb'.*over the limit of 64.0 MP"):
        strict[1]
    code = main(["validate-data", "--data_path", str(tmp_path / "data.json"), "--image_folder", str(tmp_path),
                 "--num_workers", "0", "--model_name_or_path", tiny_bases["language_model"],
                 "--vision_tower", tiny_bases["vision_tower"]])
    out = capsys.readouterr().out
    assert code == 1 and "unreadable_image" in out and "bomb" in out and "--max_image_pixels" in out
