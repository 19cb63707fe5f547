"""The tiny Llama-style tokenizer keeps every option letter and every answer apart from the
question around it: "A." after a newline is one token, and an option's or a reply's tokens are the
same whatever the question, as SentencePiece's <0x0A> newline makes them in a real Llama. A
tokenizer that merged "▁square?\\nA." would hide the letter inside question-specific tokens."""
import re

import pandas as pd
import pytest

from helpers import ROOT
from llava_moslora.demo import base_corpus as corpus
from llava_moslora.data.prompts import mcq_prompt
from llava_moslora.demo.synth import write_shapesvqa
from llava_moslora.data.templates import IMAGE_TOKEN, get_template
from llava_moslora.demo.bases import tokenizer_texts
from llava_moslora.demo.tiny import train_tokenizer

TEMPLATE = get_template("vicuna_v1")
OPTION_LINE = re.compile(r"^([A-Z])\. (.+)$", re.MULTILINE)


@pytest.fixture(scope="module", params=["shipped", "trained here"])
def tokenizer(request):
    from transformers import AutoTokenizer

    if request.param == "shipped":
        tokenizer = AutoTokenizer.from_pretrained(ROOT / "bases" / "shapes-tiny" / "llm")
    else:
        tokenizer = train_tokenizer(tokenizer_texts(3, 600), style="llama", vocab_size=400)
        tokenizer.add_tokens(list(corpus.OBJECT_WORDS))
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)  # as build_llava adds it
    return tokenizer


def tokens_between(encoding, start: int, end: int) -> list[int]:
    """The ids of the tokens covering text[start:end]; fails when a token crosses either edge."""
    ids = []
    for token, (first, last) in zip(encoding["input_ids"], encoding["offset_mapping"]):
        if last <= start or first >= end or first == last:
            continue
        assert start <= first and last <= end, f"a token spans {first}-{last}, across the edge of {start}-{end}"
        ids.append(token)
    return ids


def alone(tokenizer, text: str, before: str) -> list[int]:
    """The ids of `text` after `before`, in the smallest context: what the same words give
    wherever they appear."""
    encoding = tokenizer(before + text, return_offsets_mapping=True, add_special_tokens=False)
    return tokens_between(encoding, len(before), len(before) + len(text))


def check_rendered(tokenizer, turns) -> int:
    """Check every option line and every reply of one conversation; returns the lines checked."""
    segments = TEMPLATE.render(turns)
    text = "".join(piece for piece, _ in segments)
    encoding = tokenizer(text, return_offsets_mapping=True)
    checked, position = 0, 0
    for piece, is_reply in segments:
        if is_reply:  # the reply, its leading space and end-of-turn included
            assert tokens_between(encoding, position, position + len(piece)) == alone(tokenizer, piece, "ASSISTANT:")
        position += len(piece)
    for line in OPTION_LINE.finditer(text):
        letter = tokens_between(encoding, line.start(), line.start() + 2)
        assert tokenizer.convert_ids_to_tokens(letter) == [f"{line.group(1)}."], (line.group(0), letter)
        option = tokens_between(encoding, line.start(2) - 1, line.end())
        assert option == alone(tokenizer, " " + line.group(2), "\nA."), line.group(0)
        checked += 1
    return checked


def test_base_corpus_letters_and_answers_are_tokens_of_their_own(tokenizer):
    lines = 0
    for mix_count in (200, 0):  # the "lookup" mix, then the "full" mix
        for _, turns in corpus.text_samples(1, 200, lookup_count=mix_count):
            lines += check_rendered(tokenizer, turns)
    assert lines > 1000


def test_shapesvqa_letters_and_answers_are_tokens_of_their_own(tokenizer, tmp_path):
    import json

    write_shapesvqa(tmp_path, seed=7, num_pretrain=20, num_instruct=300, num_test=100, progress=False)
    lines = 0
    for name in ("pretrain.json", "instruct.json"):
        for record in json.loads((tmp_path / name).read_text()):
            values = [turn["value"] for turn in record["conversations"]]
            lines += check_rendered(tokenizer, list(zip(values[::2], values[1::2])))
    table = pd.read_csv(tmp_path / "ShapesVQA_MCQ.tsv", sep="\t")
    for row in table.itertuples():  # the evaluation's prompt, answered with the right letter
        prompt = mcq_prompt(row.question, [row.A, row.B, row.C, row.D])
        lines += check_rendered(tokenizer, [(f"{IMAGE_TOKEN}\n{prompt}", row.answer)])
    assert lines > 1000


def test_a_newline_is_never_merged_with_its_neighbours(tokenizer):
    vocabulary = tokenizer.get_vocab()
    merged = [token for token in vocabulary if "\n" in token and token != "\n"]
    assert merged == []
    ids = tokenizer("What color is the square?\nA. red\nB. blue", add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[pieces.index("\n") + 1] == "A." and "B." in pieces
