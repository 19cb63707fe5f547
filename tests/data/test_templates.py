"""Each template labels exactly the assistant replies (plus end-of-turn), nothing else."""
import pytest

from helpers import CORPUS
from llava_moslora.data import IGNORE_INDEX, SampleTooLong, check_tokenizer, encode_conversation, get_template
from llava_moslora.model.builder import prepare_tokenizer
from llava_moslora.demo.tiny import train_tokenizer

TWO_TURNS = [("<image>\nWhat color is the circle?", "The circle is red."),
             ("How many shapes are there?", "There are 3 shapes.")]
STYLE = {"vicuna_v1": "llama", "plain": "llama", "llama3": "llama3", "chatml": "chatml"}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    made = {}
    for style in ("llama", "llama3", "chatml"):
        path = tmp_path_factory.mktemp(style)
        train_tokenizer(CORPUS * 4, style=style, vocab_size=400).save_pretrained(path)
        made[style] = prepare_tokenizer(str(path))  # the same path build_llava takes
    return made


def labelled_runs(tokenizer, encoded):
    runs, current = [], []
    for label in encoded.labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


@pytest.mark.parametrize("name, end", [("vicuna_v1", "</s>"), ("llama3", "<|eot_id|>"), ("chatml", "<|im_end|>")])
def test_two_turn_labels_are_exactly_the_replies(tokenizers, name, end):
    tokenizer = tokenizers[STYLE[name]]
    encoded = encode_conversation(get_template(name), tokenizer, TWO_TURNS, num_image_tokens=5)
    assert [run.strip() for run in labelled_runs(tokenizer, encoded)] == \
        ["The circle is red." + end, "There are 3 shapes." + end]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert encoded.input_ids.count(image_id) == 5
    assert all(l == IGNORE_INDEX for t, l in zip(encoded.input_ids, encoded.labels) if t == image_id)
    assert len(encoded.input_ids) == len(encoded.labels) and not encoded.truncated


def test_vicuna_v1_renders_like_llava():
    text = "".join(t for t, _ in get_template("vicuna_v1").render(TWO_TURNS))
    assert text == (get_template("vicuna_v1").default_system + " USER: <image>\nWhat color is the circle? "
                    "ASSISTANT: The circle is red.</s>USER: How many shapes are there? ASSISTANT: There are 3 shapes.</s>")
    prompt = get_template("vicuna_v1").prompt([("<image>\nWhat color?", None)])
    assert prompt.endswith("USER: <image>\nWhat color? ASSISTANT:")


def test_plain_labels_exactly_the_caption_and_newline(tokenizers):
    tokenizer = tokenizers["llama"]
    encoded = encode_conversation(get_template("plain"), tokenizer, [("<image>\n", "A red circle.")], num_image_tokens=4)
    assert labelled_runs(tokenizer, encoded) == ["A red circle.\n"]
    assert tokenizer.decode(encoded.input_ids[:5]) == "<s>" + "<image>" * 4


def test_text_only_conversation_has_no_image_tokens(tokenizers):
    tokenizer = tokenizers["llama"]
    encoded = encode_conversation(get_template("vicuna_v1"), tokenizer, [("Describe a circle.", "It is round.")])
    assert tokenizer.convert_tokens_to_ids("<image>") not in encoded.input_ids
    assert [r.strip() for r in labelled_runs(tokenizer, encoded)] == ["It is round.</s>"]


def test_truncation_keeps_image_tokens_and_is_reported(tokenizers):
    tokenizer = tokenizers["llama"]
    full = encode_conversation(get_template("vicuna_v1"), tokenizer, TWO_TURNS, num_image_tokens=16)
    cut = encode_conversation(get_template("vicuna_v1"), tokenizer, TWO_TURNS, num_image_tokens=16,
                              max_length=len(full.input_ids) - 3)
    assert cut.truncated and cut.input_ids == full.input_ids[:-3] and cut.labels == full.labels[:-3]
    image_end = full.input_ids.index(tokenizer.convert_tokens_to_ids("<image>")) + 16
    with pytest.raises(SampleTooLong, match="image tokens \\(16 per image\\) end at position"):
        encode_conversation(get_template("vicuna_v1"), tokenizer, TWO_TURNS, num_image_tokens=16,
                            max_length=image_end - 1)
    # a cut that leaves no reply token: the sample is fully masked, which the collator's guard counts
    assert encode_conversation(get_template("vicuna_v1"), tokenizer, TWO_TURNS, num_image_tokens=16,
                               max_length=image_end + 2).fully_masked


def test_template_tokenizer_mismatch_is_caught(tokenizers):
    with pytest.raises(ValueError, match=r"ends each reply with '<\|im_end\|>', which this tokenizer"):
        check_tokenizer(get_template("chatml"), tokenizers["llama"])
    with pytest.raises(ValueError, match="unknown template 'vicuna'"):
        get_template("vicuna")
