"""The data forms users bring besides LLaVA JSON: parquet and Arrow files (read through
`datasets`), the messages + images form of LLaMA-Factory and ms-swift; what is not read yet
(images stored in the data, several images per sample) is refused by sample, saying what is."""
import base64
import json

import datasets
import pytest

from llava_moslora.cli import main
from llava_moslora.data import DataError, load_samples
from llava_moslora.train.dry_run import count_records

RECORDS = [
    {"id": "a", "image": "red.png", "conversations": [
        {"from": "human", "value": "What color is it?\n<image>"}, {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
    {"id": "b", "conversations": [{"from": "system", "value": "Be brief."},
                                  {"from": "human", "value": "Name a shape."}, {"from": "gpt", "value": "A circle."}]},
]
MESSAGES = [
    {"id": "a", "images": ["red.png"], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What color is it?\n"}, {"type": "image"}]},
        {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."}]},
    {"id": "b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a shape."},
                             {"role": "assistant", "content": "A circle."}]},
]


def as_json(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_parquet_arrow_and_messages_forms_give_the_samples_of_llava_json(tmp_path):
    reference = load_samples(as_json(tmp_path, RECORDS))
    table = datasets.Dataset.from_list(RECORDS)
    table.to_parquet(str(tmp_path / "data.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for path in (tmp_path / "data.parquet", arrow, tmp_path / "saved", as_json(tmp_path, MESSAGES, "messages.json")):
        assert load_samples(path) == reference, path
    assert count_records(f"{tmp_path / 'data.parquet'},{arrow}") == 4
    # parquet columns have one type: here every content is a list of parts
    parts = [{**record, "messages": [{**m, "content": m["content"] if isinstance(m["content"], list)
                                      else [{"type": "text", "text": m["content"]}]} for m in record["messages"]]}
             for record in MESSAGES]
    datasets.Dataset.from_list(parts).to_parquet(str(tmp_path / "messages.parquet"))
    assert load_samples(tmp_path / "messages.parquet") == reference


def test_validate_data_reads_a_parquet_file(capsys, tiny_bases, tmp_path):
    from PIL import Image

    Image.new("RGB", (28, 24), (220, 30, 30)).save(tmp_path / "red.png")
    datasets.Dataset.from_list(RECORDS).to_parquet(str(tmp_path / "mine.parquet"))
    code = main(["validate-data", "--data_path", str(tmp_path / "mine.parquet"), "--image_folder", str(tmp_path),
                 "--model_name_or_path", tiny_bases["language_model"], "--vision_tower", tiny_bases["vision_tower"]])
    assert code == 0 and "2 records: 2 valid" in capsys.readouterr().out


@pytest.mark.parametrize("image", [
    {"bytes": b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "path": None},
    "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * 300).decode(),
    base64.b64encode(b"\x89PNG" + b"\0" * 300).decode(),
])
def test_an_image_stored_in_the_data_is_refused_by_sample(tmp_path, image):
    records = [{**RECORDS[0], "id": "stored", "image": image}, RECORDS[1]]
    if isinstance(image, dict):  # {"bytes", "path"}: how parquet datasets store images
        path = tmp_path / "stored.parquet"
        datasets.Dataset.from_list(records).to_parquet(str(path))
    else:
        path = as_json(tmp_path, records)
    rejected = []
    assert len(load_samples(path, rejected)) == 1
    assert [(e.kind, e.sample_id) for e in rejected] == [("embedded_image", "stored")]
    assert "--image_folder" in str(rejected[0])


def test_an_image_feature_column_is_read_without_decoding_and_refused_by_sample(tmp_path):
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(png, format="PNG")
    table = datasets.Dataset.from_list([{**RECORDS[0], "image": {"bytes": png.getvalue(), "path": None}}])
    table = table.cast_column("image", datasets.Image())  # as the_cauldron and LLaVA-OneVision-Data hold them
    table.to_parquet(str(tmp_path / "embedded.parquet"))
    with pytest.raises(DataError, match="'a'.*stored in the data") as error:
        load_samples(tmp_path / "embedded.parquet")
    assert error.value.kind == "embedded_image"


def test_several_images_and_a_binary_file_get_errors_that_say_what_is_read(tmp_path):
    two = {**MESSAGES[0], "id": "two", "images": ["red.png", "blue.png"]}
    with pytest.raises(DataError, match="'two'.*2 images; one image per sample"):
        load_samples(as_json(tmp_path, [two]))
    unknown = {"id": "odd", "messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(DataError, match="'odd'.*unknown role 'robot'"):
        load_samples(as_json(tmp_path, [unknown]))
    datasets.Dataset.from_list(RECORDS).to_parquet(str(tmp_path / "named-wrong.json"))  # a parquet file, .json name
    with pytest.raises(DataError, match="not UTF-8 text.*\\.parquet or \\.arrow file"):
        load_samples(tmp_path / "named-wrong.json")
