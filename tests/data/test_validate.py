"""validate-data: every fault of the fixture dataset is reported with its id; the clean subset
written by --write-clean validates clean."""
import json

import pytest

from helpers import write_faulty_dataset
from llava_moslora.cli import main


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    return write_faulty_dataset(tmp_path_factory.mktemp("faulty"))


def validate(capsys, tiny_bases, data, images, *extra):
    code = main(["validate-data", "--data_path", str(data), "--image_folder", str(images),
                 "--model_name_or_path", tiny_bases["language_model"], "--vision_tower", tiny_bases["vision_tower"],
                 "--model_max_length", "256", *extra])
    return code, capsys.readouterr().out


def test_every_fault_is_reported_by_id_and_the_exit_code_says_so(capsys, tiny_bases, faulty, tmp_path):
    data, images, kinds = faulty
    report = tmp_path / "report.jsonl"
    code, out = validate(capsys, tiny_bases, data, images, "--num_workers", "2", "--report", str(report))
    assert code == 1
    findings = [json.loads(line) for line in report.read_text().splitlines()]
    found = {(f["sample_id"], f["kind"]) for f in findings}
    assert found == set(kinds.items()), found ^ set(kinds.items())
    for sample_id, kind in kinds.items():
        if sample_id is not None:
            assert any(kind in line and f" {sample_id}:" in line for line in out.splitlines()), (sample_id, out)
    malformed = next(f for f in findings if f["kind"] == "malformed_line")
    assert malformed["where"].endswith("(line 9)")
    assert {f["severity"] for f in findings if f["kind"] == "truncated"} == {"warning"}
    # 24 good + 10 faulty + 1 duplicate + 1 malformed line; the truncated reply is only a warning
    assert "36 records: 25 valid, 11 with errors" in out
    assert "fully_masked 1" in out and "unreadable_image 2" in out


def test_write_clean_keeps_the_valid_samples_and_validates_clean(capsys, tiny_bases, faulty, tmp_path):
    data, images, _ = faulty
    clean = tmp_path / "clean.jsonl"
    code, _ = validate(capsys, tiny_bases, data, images, "--num_workers", "0", "--write-clean", str(clean))
    assert code == 1
    ids = [json.loads(line)["id"] for line in clean.read_text().splitlines()]
    assert ids[:3] == ["good-0", "good-1", "good-2"] and "truncated-reply" in ids and len(ids) == 25
    assert len(set(ids)) == len(ids)
    code, out = validate(capsys, tiny_bases, clean, images)
    assert code == 0, out
    assert "25 records: 25 valid, 0 with errors (0 errors, 1 warnings)" in out


def test_image_tokens_must_be_known(capsys, tiny_bases, faulty):
    data, images, _ = faulty
    with pytest.raises(SystemExit, match="--vision_tower"):
        main(["validate-data", "--data_path", str(data), "--image_folder", str(images),
              "--model_name_or_path", tiny_bases["language_model"]])


def test_a_stage_checkpoint_supplies_tokenizer_template_and_image_tokens(capsys, tiny_checkpoint, faulty):
    data, images, _ = faulty
    code = main(["validate-data", "--data_path", str(data), "--image_folder", str(images),
                 "--model_name_or_path", str(tiny_checkpoint), "--model_max_length", "256", "--num_workers", "0"])
    out = capsys.readouterr().out
    assert code == 1 and "template 'vicuna_v1', 16 image tokens" in out
