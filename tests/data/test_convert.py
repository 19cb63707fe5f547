"""convert-data writes any form as one parquet file (messages + images, images inside) that
trains on the very items of its source; bad samples stop it by name or are left out."""
import json

import datasets
import torch
from PIL import Image

from llava_moslora.cli import main
from llava_moslora.data import LlavaDataset
from llava_moslora.demo.pairs import shape_count, write_pairs
from llava_moslora.demo.synth import write_shapesvqa
from llava_moslora.model import build_llava


def test_a_converted_dataset_gives_the_items_of_its_source(tiny_bases, tmp_path, capsys):
    write_shapesvqa(tmp_path, seed=3, num_pretrain=0, num_instruct=30, num_test=6, progress=False)
    counts = write_pairs(tmp_path, num_pairs=10, num_test_pairs=6, seed=3)
    assert counts == {"pairs": 10, "test_pairs": 6}
    scenes = json.loads((tmp_path / "scenes.json").read_text())
    for pair in json.loads((tmp_path / "pairs.json").read_text()):  # the answer is the image with more shapes
        first, second = (shape_count(scenes[name]) for name in pair["image"])
        assert pair["conversations"][1]["value"] == ("A" if first > second else "B")
    source = f"{tmp_path / 'pairs.json'},{tmp_path / 'instruct.json'}"
    out = tmp_path / "converted" / "all.parquet"
    assert main(["convert-data", "--data_path", source, "--image_folder", str(tmp_path / "images"),
                 "--out", str(out)]) == 0
    assert "wrote 40 samples" in capsys.readouterr().out
    assert isinstance(datasets.Dataset.from_parquet(str(out)).features["images"].feature, datasets.Image)
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])

    def items(path, folder=None):
        data = LlavaDataset(path, bundle.tokenizer, bundle.image_processor, "vicuna_v1",
                            num_image_tokens=bundle.recipe.num_image_tokens, image_folder=folder)
        return [data[i] for i in range(len(data))]

    for want, got in zip(items(source, tmp_path / "images"), items(out)):
        assert want["id"] == got["id"] and torch.equal(want["input_ids"], got["input_ids"])
        assert torch.equal(want["labels"], got["labels"])
        assert (want["pixel_values"] is None) == (got["pixel_values"] is None)
        assert want["pixel_values"] is None or torch.equal(want["pixel_values"], got["pixel_values"])


def test_bad_samples_stop_the_conversion_by_name_or_are_left_out(tmp_path, capsys):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ok.png")
    records = [{"id": "fine", "image": "ok.png", "conversations": [
                   {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A square."}]},
               {"id": "lost", "image": "gone.png", "conversations": [
                   {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "?"}]}]
    (tmp_path / "data.json").write_text(json.dumps(records))
    args = ["convert-data", "--data_path", str(tmp_path / "data.json"), "--image_folder", str(tmp_path),
            "--out", str(tmp_path / "out.parquet")]
    assert main(args) == 1
    assert "'lost': image file not found" in capsys.readouterr().err and not (tmp_path / "out.parquet").exists()
    assert main([*args, "--skip_bad_samples"]) == 0
    assert "left out 1 bad ones" in capsys.readouterr().out
    assert len(datasets.Dataset.from_parquet(str(tmp_path / "out.parquet"))) == 1
    assert main([*args[:-1], str(tmp_path / "out.json")]) == 2
