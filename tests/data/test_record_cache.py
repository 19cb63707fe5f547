"""The memory-mapped record cache reads LLaVA JSON / JSONL exactly as the in-memory path does
(same samples, order and errors), and the screen's fast summary agrees with encode_conversation."""
import itertools
import json
import pickle

import pytest

from helpers import write_faulty_dataset
from llava_moslora.data import LlavaDataset, encode_conversation, get_template
from llava_moslora.data import record_cache
from llava_moslora.data.record_cache import open_samples
from llava_moslora.data.records import DataError, load_samples
from llava_moslora.data.tokenize import ConversationSummary, summarise_conversations
from llava_moslora.data.validate import SampleChecker, all_findings, check_samples
from llava_moslora.model import build_llava


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """Every file goes through the cache, read 7 characters at a time (chunk edges everywhere)."""
    monkeypatch.setenv("LLAVA_MOSLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(record_cache, "MMAP_MIN_BYTES", 0)
    monkeypatch.setattr(record_cache, "READ_CHUNK", 7)
    monkeypatch.setattr(record_cache, "BATCH", 5)
    return tmp_path / "cache" / "records"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    return write_faulty_dataset(tmp_path_factory.mktemp("faulty"))


def errors(found):
    return [(str(e), e.kind, e.sample_id, e.where) for e in found]


def same_as_in_memory(path):
    expected_rejected, rejected = [], []
    expected = load_samples(path, expected_rejected)
    samples = open_samples(path, rejected)
    assert isinstance(samples, record_cache.SampleTable)
    assert list(samples) == expected and [samples[i] for i in range(len(expected))] == expected
    assert errors(rejected) == errors(expected_rejected)
    return samples, expected, expected_rejected


def as_json_list(faulty, tmp_path, indent=None):
    lines = [line for line in faulty[0].read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    path = tmp_path / "faulty.json"
    path.write_text(" \n" + json.dumps(records + [7, "x", None, 1.5e3], indent=indent) + "\n\n")
    return path


def test_jsonl_and_json_lists_give_the_same_samples_and_errors(cached, faulty, tmp_path):
    samples, expected, rejected = same_as_in_memory(faulty[0])
    assert any(e.kind == "malformed_line" for e in rejected) and len(expected) > 20
    for indent in (None, 2):
        same_as_in_memory(as_json_list(faulty, tmp_path, indent))
    both = f"{faulty[0]},{as_json_list(faulty, tmp_path)}"
    same_as_in_memory(both)
    assert samples.ids() == [s.id for s in expected]
    assert samples.modality_lengths() == [s.modality_length for s in expected]
    assert list(samples[3::4]) == expected[3::4] and list(samples.without([0, 2])) == expected[1:2] + expected[3:]
    assert list(pickle.loads(pickle.dumps(samples[1:]))) == expected[1:]


def test_without_a_rejected_list_the_first_bad_record_raises_as_before(cached, faulty):
    with pytest.raises(DataError) as expected:
        load_samples(faulty[0])
    with pytest.raises(DataError) as error:
        open_samples(faulty[0])
    assert (str(error.value), error.value.kind, error.value.where) == (str(expected.value), expected.value.kind,
                                                                      expected.value.where)


@pytest.mark.parametrize("text", ['[{"id": "a", "conversations": []} {"id": "b"}]', '[{"id": "a"},]', '[{"id": 1}] x',
                                  '[{"id": "a"}', '\x0b[{"id": 1}]', '[1, 2', '[12', '[{"id": "a"}]]'])
def test_a_malformed_json_list_fails_with_the_same_message_and_is_not_cached(cached, tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    messages = []
    for read in (load_samples, open_samples):
        try:
            read(path, [])
            messages.append(None)
        except DataError as error:
            messages.append((str(error), error.kind))
    assert messages[0] == messages[1]
    if messages[0] is not None:
        assert not list(cached.glob("*.arrow"))


def test_converted_once_and_again_when_the_file_changes(cached, faulty, tmp_path, monkeypatch):
    path = as_json_list(faulty, tmp_path)
    same_as_in_memory(path)
    assert len(list(cached.glob("*.arrow"))) == 1
    monkeypatch.setattr(record_cache, "_convert", lambda *a: pytest.fail("converted twice"))
    same_as_in_memory(path)
    monkeypatch.undo()
    monkeypatch.setenv("LLAVA_MOSLORA_CACHE", str(cached.parent))
    monkeypatch.setattr(record_cache, "MMAP_MIN_BYTES", 0)
    path.write_text(json.dumps(json.loads(path.read_text())[:5]))
    samples, expected, _ = same_as_in_memory(path)
    assert len(samples) == len(expected) == 5 and len(list(cached.glob("*.arrow"))) == 2


def test_the_dataset_and_its_screen_match_the_in_memory_path(cached, faulty, tiny_bases, monkeypatch):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    data, images, _ = faulty

    def build():
        return LlavaDataset(data, bundle.tokenizer, bundle.image_processor, "vicuna_v1", collect_rejected=True,
                            num_image_tokens=bundle.recipe.num_image_tokens, image_folder=images, model_max_length=256)
    mapped = build()
    monkeypatch.setattr(record_cache, "MMAP_MIN_BYTES", 1 << 60)
    listed = build()
    assert isinstance(mapped.samples, record_cache.SampleTable) and isinstance(listed.samples, list)
    assert mapped.modality_lengths == listed.modality_lengths and errors(mapped.rejected) == errors(listed.rejected)
    found = [all_findings(d.rejected, d.samples, check_samples(d.samples, d.checker(), progress=False))
             for d in (mapped, listed)]
    assert found[0] == found[1] and len(found[0]) > 10
    bad = sorted({f.index for f in found[0] if f.is_error and f.index is not None})
    for d in (mapped, listed):
        d.exclude(bad)
    assert list(mapped.samples) == listed.samples
    for i in (0, len(listed) - 1):
        assert mapped[i]["input_ids"].tolist() == listed[i]["input_ids"].tolist()


def test_the_screen_summary_agrees_with_encode_conversation(tiny_bases):
    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"])
    tokenizer = bundle.tokenizer
    long = " ".join(["The circle is red."] * 30)
    conversations = [  # (turns, system, images)
        ([("<image>\nWhat color is it?", "Red."), ("And the square?", long)], None, 1),
        ([("What color is it?", "Red.")], None, 0),
        ([("What color is it?", "")], None, 0),
        ([("<image>\nWhat?", "Red.")], None, 0),  # an <image> in a text-only sample
        ([("What?", "Red.")], None, 1),  # an image sample without <image>
        ([(long + " <image>", "Red.")], "", 1),
        ([("<image>\nWhat?", long)], "You are a helpful assistant.", 1),
        ([("<image> <image>\nWhich has more shapes?", "The first."), ("Sure?", long)], None, 2),
        ([("<image>\nThis one?", "Red."), ("<image>\nAnd this " + long, "Blue.")], None, 2),  # a later turn's
        ([("<image>\nWhat?", "Red.")], None, 2),  # one placeholder short
    ]
    for name in ("vicuna_v1", "plain"):
        template = get_template(name)
        for max_length, image_tokens in itertools.product((None, 8, 20, 40, 64, 120, 400), (16, 300)):
            summaries = summarise_conversations(template, tokenizer, conversations, num_image_tokens=image_tokens,
                                                max_length=max_length)
            for (turns, system, images), summary in zip(conversations, summaries):
                try:
                    encoded = encode_conversation(template, tokenizer, turns, num_image_tokens=image_tokens,
                                                  num_images=images, max_length=max_length, system=system)
                except ValueError as error:
                    assert type(summary) is type(error) and str(summary) == str(error)
                    continue
                assert summary == ConversationSummary(len(encoded.input_ids), encoded.truncated, encoded.fully_masked)
    checker = SampleChecker(get_template("vicuna_v1"), tokenizer, 16, 64)
    assert checker.check_many([]) == []
