"""LlavaDataset, the collator and its masked-label guard, the modality-grouped sampler."""
import json

import pytest
import torch
from PIL import Image

from llava_moslora.data import (DataError, IGNORE_INDEX, LlavaCollator, LlavaDataset, MaskedLabelsError,
                                ModalityLengthGroupedSampler, modality_grouped_indices)
from llava_moslora.model import build_llava


@pytest.fixture(scope="module")
def bundle(tiny_bases):
    return build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])


def image_sample(i, image="red.png"):
    return {"id": f"img-{i}", "image": image, "conversations": [
        {"from": "human", "value": "What color is the circle?\n<image>"},
        {"from": "gpt", "value": "The circle is red."},
        {"from": "human", "value": "How many shapes are there?"},
        {"from": "gpt", "value": "There are 3 shapes."}]}


def text_sample(i):
    return {"id": f"txt-{i}", "conversations": [{"from": "human", "value": "Describe a circle."},
                                                {"from": "gpt", "value": "A circle is round."}]}


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (48, 24), (220, 20, 20)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    return tmp_path


def write(folder, records, name="data.json", jsonl=False):
    path = folder / name
    path.write_text("\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records))
    return path


def dataset(bundle, path, folder, **kwargs):
    return LlavaDataset(path, bundle.tokenizer, bundle.image_processor, kwargs.pop("template", "vicuna_v1"),
                        num_image_tokens=bundle.recipe.num_image_tokens, image_folder=folder, **kwargs)


@pytest.mark.parametrize("jsonl", [False, True])
def test_mixed_batch_runs_through_the_model(bundle, folder, jsonl):
    data = dataset(bundle, write(folder, [image_sample(0), text_sample(1), image_sample(2)], jsonl=jsonl), folder)
    assert len(data) == 3 and data.modality_lengths[0] > 0 > data.modality_lengths[1]
    item = data[0]
    assert item["pixel_values"].shape == (1, 3, 32, 32) and data[1]["pixel_values"] is None
    # <image> moved to the start of the first human turn, as LLaVA does
    assert bundle.tokenizer.decode(item["input_ids"]).count("<image>") == 16
    collator = LlavaCollator(bundle.tokenizer.pad_token_id)
    batch = collator([data[0], data[1], data[2]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    lengths = [len(data[i]["input_ids"]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    padded = batch["attention_mask"] == 0
    assert (batch["labels"][padded] == IGNORE_INDEX).all()
    assert (batch["input_ids"][padded] == bundle.tokenizer.pad_token_id).all()
    image_id = bundle.model.config.image_token_id
    assert int((batch["input_ids"] == image_id).sum()) == 2 * 16
    loss = bundle.model(**batch).loss
    assert torch.isfinite(loss)
    text_only = collator([data[1], data[1]])
    assert "pixel_values" not in text_only and torch.isfinite(bundle.model(**text_only).loss)


@pytest.mark.parametrize("records, message", [
    ([image_sample(0, image="missing.png")], r"sample 'img-0': image file not found: .*missing.png"),
    ([image_sample(0, image="broken.png")], r"sample 'img-0': cannot read image .*broken.png"),
])
def test_bad_images_name_the_sample_and_the_file(bundle, folder, records, message):
    data = dataset(bundle, write(folder, records), folder)
    with pytest.raises(DataError, match=message):
        data[0]


def _with(record, **changes):
    return {**record, **changes}


@pytest.mark.parametrize("records, message", [
    ([_with(text_sample(0), conversations=[{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "X"}])],
     r"data.json \(item 0\), sample 'txt-0': has 1 <image> placeholder but no image column"),
    ([_with(image_sample(0), conversations=[{"from": "human", "value": "What?"}, {"from": "gpt", "value": "X"}])],
     r"sample 'img-0': has 1 image but 0 <image> placeholders"),
    ([_with(text_sample(3), conversations=[{"from": "robot", "value": "hi"}])],
     r"sample 'txt-3': unknown role 'robot' in turn 0"),
    ([_with(text_sample(4), conversations=[])], r"sample 'txt-4': empty or missing 'conversations'"),
    ([_with(text_sample(5), conversations=[{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}])],
     r"sample 'txt-5': turn 0 \(gpt\) breaks the human/gpt alternation"),
])
def test_bad_records_name_the_sample_and_the_file(bundle, folder, records, message):
    with pytest.raises(DataError, match=message):
        dataset(bundle, write(folder, records), folder)


def test_malformed_json_line_gives_the_line_number(bundle, folder):
    path = folder / "data.jsonl"
    path.write_text(json.dumps(text_sample(0)) + "\n" + json.dumps(text_sample(1)) + "\n{\"id\": 2, oops\n")
    with pytest.raises(DataError, match=r"data.jsonl: malformed JSON on line 3"):
        dataset(bundle, path, folder)


def test_missing_files_and_folders(bundle, folder):
    with pytest.raises(DataError, match="data file not found"):
        dataset(bundle, folder / "nope.json", folder)
    with pytest.raises(DataError, match="has an image file but no --image_folder"):
        LlavaDataset(write(folder, [image_sample(0)]), bundle.tokenizer, bundle.image_processor, "vicuna_v1",
                     num_image_tokens=16)


def test_hf_datasets_directory(bundle, folder):
    import datasets
    records = [text_sample(0), text_sample(1)]
    datasets.Dataset.from_list(records).save_to_disk(str(folder / "hf"))
    assert len(dataset(bundle, folder / "hf", folder)) == 2


def test_guard_stops_a_run_whose_labels_are_all_masked(bundle, folder):
    data = dataset(bundle, write(folder, [image_sample(i) for i in range(20)]), folder, model_max_length=45)
    collator = LlavaCollator(bundle.tokenizer.pad_token_id)
    assert data[0]["truncated"]
    with pytest.raises(MaskedLabelsError, match=r"16 of the first 16 samples have every label masked.*"
                                                 r"--model_max_length too short.*16 of them were truncated"):
        for start in range(0, 20, 4):
            collator([data[i] for i in range(start, start + 4)])


def test_guard_counts_without_stopping_a_healthy_run(bundle, folder):
    data = dataset(bundle, write(folder, [image_sample(i) for i in range(20)]), folder)
    collator = LlavaCollator(bundle.tokenizer.pad_token_id)
    for start in range(0, 20, 4):
        collator([data[i] for i in range(start, start + 4)])
    assert collator.guard.summary() == {"samples": 20, "fully_masked": 0, "truncated": 0}


def test_grouped_sampler_batches_one_modality_at_a_time():
    lengths = [5, -3, 7, -2, 9, 4, -8, 6, -1, 3, 2, -4, 8, -6, 1]
    generator = torch.Generator().manual_seed(0)
    order = modality_grouped_indices(lengths, batch_size=2, world_size=2, generator=generator)
    assert sorted(order) == list(range(len(lengths)))
    megabatches = [order[i:i + 4] for i in range(0, len(order), 4)]
    for batch in megabatches[:-1]:
        assert len({lengths[i] > 0 for i in batch}) == 1, batch
    for batch in megabatches[:-1]:
        assert [abs(lengths[i]) for i in batch] == sorted((abs(lengths[i]) for i in batch), reverse=True)
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=2, world_size=2, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(list(sampler)) == sorted(first) and list(sampler) != first


def test_several_data_files_joined_with_commas(bundle, folder):
    first = write(folder, [text_sample(0), text_sample(1)], name="a.json")
    second = write(folder, [image_sample(2)], name="b.jsonl", jsonl=True)
    data = dataset(bundle, f"{first},{second}", folder)
    assert [s.id for s in data.samples] == ["txt-0", "txt-1", "img-2"]
