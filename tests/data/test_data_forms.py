"""The data forms users bring besides LLaVA JSON + image files: parquet and Arrow files, datasets
folders, the messages + images form of LLaMA-Factory and ms-swift, images stored in the data
(datasets.Image columns, {"bytes", "path"} structs, base64), several images per sample. Each gives
the very items LLaVA JSON + image files give; bad ones are named by sample."""
import base64
import io
import json
import pickle

import datasets
import pytest
import torch
from PIL import Image

from llava_moslora.cli import main
from llava_moslora.data import DataError, LlavaCollator, LlavaDataset, load_samples
from llava_moslora.data.tables import TableImage
from llava_moslora.model import build_llava
from llava_moslora.train.dry_run import count_records

COLOURS = {"red.png": (220, 30, 30), "blue.png": (30, 40, 220), "wide.png": (30, 200, 40)}
SIZES = {"red.png": (28, 24), "blue.png": (24, 24), "wide.png": (40, 16)}
RECORDS = [
    {"id": "a", "image": "red.png", "conversations": [
        {"from": "human", "value": "What color is it?\n<image>"}, {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
    {"id": "b", "conversations": [{"from": "system", "value": "Be brief."},
                                  {"from": "human", "value": "Name a shape."}, {"from": "gpt", "value": "A circle."}]},
    {"id": "two", "image": ["blue.png", "wide.png"], "conversations": [
        {"from": "human", "value": "<image> <image>\nWhich image has more shapes?"}, {"from": "gpt", "value": "The second."}]},
    {"id": "later", "image": ["red.png", "blue.png"], "conversations": [
        {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "And this one? <image>"}, {"from": "gpt", "value": "Blue."}]},
]


def png(name):
    buffer = io.BytesIO()
    Image.new("RGB", SIZES[name], COLOURS[name]).save(buffer, format="PNG")
    return buffer.getvalue()


def image_files(folder):
    for name in COLOURS:
        (folder / name).write_bytes(png(name))
    return folder


def as_json(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def as_messages(record, image=lambda name: name):
    """A LLaVA record in the messages + images form, content as parts, images through `image`."""
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    messages = []
    for turn in record["conversations"]:
        parts = []
        for k, text in enumerate(turn["value"].split("<image>")):
            if k:
                parts.append({"type": "image", "text": None})
            if text:
                parts.append({"type": "text", "text": text})
        messages.append({"role": roles[turn["from"]], "content": parts})
    names = record.get("image") or []
    names = [names] if isinstance(names, str) else names
    return {"id": record["id"], "messages": messages, "images": [image(name) for name in names]}


def stored(records):
    """The records with each image's PNG bytes stored in place of its name (always a list: a
    parquet column has one type)."""
    def names(record):
        return [record["image"]] if isinstance(record.get("image"), str) else record.get("image") or []
    return [{**r, "image": [{"bytes": png(n), "path": None} for n in names(r)]} for r in records]


def items(dataset):
    return [(item["input_ids"].tolist(), item["labels"].tolist(),
             None if item["pixel_values"] is None else item["pixel_values"]) for item in map(dataset.__getitem__, range(len(dataset)))]


@pytest.fixture(scope="module")
def bundle(tiny_bases):
    return build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])


def dataset(bundle, path, image_folder=None, **kwargs):
    return LlavaDataset(path, bundle.tokenizer, bundle.image_processor, "vicuna_v1",
                        num_image_tokens=bundle.recipe.num_image_tokens, image_folder=image_folder, **kwargs)


def test_every_form_gives_the_items_of_llava_json_with_image_files(bundle, tmp_path):
    (tmp_path / "images").mkdir()
    folder = image_files(tmp_path / "images")
    reference = items(dataset(bundle, as_json(tmp_path, RECORDS), folder))
    embedded = datasets.Dataset.from_list(stored(RECORDS))
    embedded.to_parquet(str(tmp_path / "embedded.parquet"))
    featured = embedded.cast_column("image", datasets.Sequence(datasets.Image()))  # as the_cauldron holds them
    featured.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "hub" / "data").mkdir(parents=True)  # a dataset repository as cloned from the hub
    featured.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    messages = datasets.Dataset.from_list([as_messages(r, lambda n: {"bytes": png(n), "path": None}) for r in RECORDS])
    messages.to_parquet(str(tmp_path / "messages.parquet"))
    inline = as_json(tmp_path, [as_messages(r, lambda n: "data:image/png;base64," + base64.b64encode(png(n)).decode())
                                for r in RECORDS], "inline.json")
    by_path = datasets.Dataset.from_list(RECORDS[:1] + RECORDS[1:2])  # a string column of paths
    for path in (tmp_path / "embedded.parquet", tmp_path / "saved", tmp_path / "hub", tmp_path / "messages.parquet",
                 inline, next((tmp_path / "saved").glob("*.arrow"))):
        got = items(dataset(bundle, path))
        assert len(got) == len(reference), path
        for (ids, labels, pixels), (ids_, labels_, pixels_) in zip(got, reference):
            assert ids == ids_ and labels == labels_, path
            assert (pixels is None) == (pixels_ is None) and (pixels is None or torch.equal(pixels, pixels_)), path
    by_path.to_parquet(str(tmp_path / "paths.parquet"))
    assert items(dataset(bundle, tmp_path / "paths.parquet", folder))[0][0] == reference[0][0]
    assert count_records(f"{tmp_path / 'embedded.parquet'},{tmp_path / 'saved'}") == 8


def test_stored_images_are_references_not_bytes(tmp_path):
    """Reading the records reads no image: each sample holds a reference into the memory-mapped
    table, and the image is fetched when the sample is drawn."""
    big = [{**r, "image": [{"bytes": png("red.png") + b"\0" * 20000, "path": None}]} for r in stored(RECORDS[:1]) * 50]
    datasets.Dataset.from_list([{**r, "id": str(i)} for i, r in enumerate(big)]).to_parquet(str(tmp_path / "big.parquet"))
    samples = load_samples(tmp_path / "big.parquet")
    assert all(isinstance(s.images[0], TableImage) for s in samples)
    assert len(pickle.dumps(samples)) < 50 * 20000 / 20  # the references, not the megabyte of images


def test_two_images_are_collated_in_placeholder_order_and_fill_their_own_tokens(bundle, tmp_path):
    """Compared with transformers' LlavaForConditionalGeneration filling the same batch by hand:
    each image's features land on its own placeholder's tokens, padded and packed."""
    folder = image_files(tmp_path)
    data = dataset(bundle, as_json(tmp_path, RECORDS), folder)
    features = [data[i] for i in (2, 0, 3)]
    expected_images = torch.cat([features[0]["pixel_values"], features[1]["pixel_values"], features[2]["pixel_values"]])
    assert expected_images.shape[0] == 5
    model = bundle.model.eval()
    image_id = model.config.image_token_id
    for packing in (False, True):
        batch = LlavaCollator(bundle.tokenizer.pad_token_id, packing=packing, max_length=4096)(features)
        assert torch.equal(batch["pixel_values"], expected_images)
        with torch.no_grad():
            got = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            blocks = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
            embeds = model.get_input_embeddings()(batch["input_ids"])
            where = (batch["input_ids"] == image_id).nonzero().tolist()
            tokens = torch.cat(list(blocks)) if isinstance(blocks, (list, tuple)) else blocks.reshape(-1, blocks.shape[-1])
            assert len(where) == tokens.shape[0]
            for (row, column), feature in zip(where, tokens):  # in reading order: image k's block is the k-th
                embeds[row, column] = feature
            rest = {k: v for k, v in batch.items() if k in ("attention_mask", "position_ids")}
            manual = model(inputs_embeds=embeds, **rest).logits
        torch.testing.assert_close(got, manual, atol=1e-5, rtol=1e-5)
        swapped = dict(batch, pixel_values=batch["pixel_values"][[1, 0, 2, 3, 4]])
        with torch.no_grad():
            assert not torch.allclose(model(**{k: v for k, v in swapped.items() if k != "labels"}).logits, got)


def test_a_truncation_that_would_cut_an_image_skips_the_sample_and_names_it(bundle, tmp_path):
    folder = image_files(tmp_path)
    whole = dataset(bundle, as_json(tmp_path, RECORDS), folder)[3]["input_ids"]  # "later": an image in each turn
    image = (whole == bundle.model.config.image_token_id).nonzero().flatten().tolist()
    second = next(p for p, q in zip(image[1:], image) if p != q + 1)
    limit = second + 3  # the second image's tokens would be cut
    data = dataset(bundle, as_json(tmp_path, RECORDS), folder, model_max_length=limit, skip_bad_samples=True)
    item = data[3]
    assert item["id"] != "later" and item["skipped_ids"] == ["later"]
    strict = dataset(bundle, as_json(tmp_path, RECORDS), folder, model_max_length=limit)
    with pytest.raises(DataError, match="'later'.*truncating would cut an image"):
        strict[3]
    past = image[-1] + 2  # past the last image: cut, not skipped
    assert len(whole) > past and dataset(bundle, as_json(tmp_path, RECORDS), folder, model_max_length=past)[3]["truncated"]


def test_bad_input_is_named_by_sample(tmp_path):
    cases = {
        "short": {**RECORDS[2], "image": ["blue.png"]},  # two placeholders, one image
        "extra": {**RECORDS[0], "image": ["red.png", "blue.png"]},
        "in-reply": {**RECORDS[0], "conversations": [RECORDS[0]["conversations"][0],
                                                     {"from": "gpt", "value": "<image> Red."}]},
        "robot": {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        "no-column": {"conversations": RECORDS[0]["conversations"]},
    }
    expected = {"short": ("image_token_mismatch", "has 1 image but 2 <image> placeholders"),
                "extra": ("image_token_mismatch", "has 2 images but 1 <image> placeholder"),
                "in-reply": ("image_token_mismatch", "in a reply"),
                "robot": ("unknown_role", "unknown role 'robot'"),
                "no-column": ("image_token_mismatch", "but no image column")}
    rejected = []
    load_samples(as_json(tmp_path, [{**record, "id": name} for name, record in cases.items()]), rejected)
    assert {e.sample_id: e.kind for e in rejected} == {name: kind for name, (kind, _) in expected.items()}
    for error in rejected:
        assert expected[error.sample_id][1] in str(error), str(error)
    numbers = [{**RECORDS[0], "image": 7}]  # an image column that holds no image
    datasets.Dataset.from_list(numbers).to_parquet(str(tmp_path / "numbers.parquet"))
    with pytest.raises(DataError, match="'a'.*got column type int64"):
        load_samples(tmp_path / "numbers.parquet")
    datasets.Dataset.from_list(RECORDS[:2]).to_parquet(str(tmp_path / "named-wrong.json"))  # parquet, .json name
    with pytest.raises(DataError, match="not UTF-8 text.*\\.parquet or \\.arrow file"):
        load_samples(tmp_path / "named-wrong.json")


def test_undecodable_stored_bytes_are_named_by_validate_data_and_when_drawn(bundle, capsys, tiny_bases, tmp_path):
    records = stored(RECORDS[:2]) + [{**stored(RECORDS[:1])[0], "id": "garbled",
                                      "image": [{"bytes": b"\x89PNG\r\n\x1a\n" + b"\1" * 64, "path": None}]}]
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "mine.parquet"))
    code = main(["validate-data", "--data_path", str(tmp_path / "mine.parquet"), "--num_workers", "0",
                 "--model_name_or_path", tiny_bases["language_model"], "--vision_tower", tiny_bases["vision_tower"],
                 "--report", str(tmp_path / "report.jsonl")])
    out = capsys.readouterr().out
    assert code == 1 and "3 records: 2 valid, 1 with errors" in out
    finding = json.loads((tmp_path / "report.jsonl").read_text().splitlines()[0])
    assert finding["kind"] == "unreadable_image" and finding["sample_id"] == "garbled"
    assert "row 2 in" in finding["message"]
    with pytest.raises(DataError, match="'garbled'.*cannot decode the image bytes"):
        dataset(bundle, tmp_path / "mine.parquet")[2]


def test_a_dataset_id_reads_offline_from_the_hub_cache(bundle, tmp_path, monkeypatch):
    """A dataset repository as `hf download --repo-type dataset` leaves it in the hub cache is
    read by its id with the network off, as a model id is; one not there names the download."""
    import huggingface_hub

    (tmp_path / "images").mkdir()
    reference = items(dataset(bundle, as_json(tmp_path, RECORDS), image_files(tmp_path / "images")))
    repo = tmp_path / "hub" / "datasets--tiny-org--shapes-stored"
    (repo / "snapshots" / ("0" * 40) / "data").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    datasets.Dataset.from_list(stored(RECORDS)).to_parquet(
        str(repo / "snapshots" / ("0" * 40) / "data" / "train-00000-of-00001.parquet"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    got = items(dataset(bundle, "tiny-org/shapes-stored"))
    assert [(ids, labels) for ids, labels, _ in got] == [(ids, labels) for ids, labels, _ in reference]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(got, reference) if a is not None)
    with pytest.raises(DataError, match="hf download --repo-type dataset tiny-org/absent"):
        load_samples("tiny-org/absent")
