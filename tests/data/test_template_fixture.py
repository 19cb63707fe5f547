"""Every conversation format gives the input ids and labels it gave when the fixture was written.

tests/data/fixtures/template_encodings.json holds 200 conversations (multi-turn, images in
several places, spaces, blank lines, code, CJK, emoji, default / empty / custom system prompts)
and, for each (tokenizer family, template, conversation), the SHA-256 of the training encoding
(input ids and labels, images expanded) and of the generation prompt's ids. It was written with
the templates as Python renderers, before they became Jinja chat templates with marked replies,
so this test is the proof that the move changed no token. Rewrite it only on purpose:
`python tests/data/test_template_fixture.py --write`.
"""
import hashlib
import json
import random
import sys
from pathlib import Path

import pytest
from tokenizers import AddedToken
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from real_tokenizers import save_real_tokenizer_lm  # noqa: E402

from llava_moslora.data import encode_conversation, get_template  # noqa: E402
from llava_moslora.data.templates import IMAGE_TOKEN  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "template_encodings.json"
IMAGE_TOKENS = 3  # each <image> becomes this many image tokens, so the expansion is part of the check
# each real tokenizer family with the formats it is used with (a format's end-of-turn marker must be
# one of its tokens)
FORMATS = {"vicuna": ("vicuna_v1", "plain", "moelora_llava"), "llama3": ("llama3", "llama3_chat", "plain"),
           "qwen2": ("chatml", "internlm2_chat", "plain")}

_PIECES = [
    "What color is the circle?", "Describe the image in detail.", "  leading spaces", "trailing spaces   ",
    "two\n\nparagraphs", "\n\nblank lines first", "ends with a newline\n", "tabs\tinside\t", "",
    "```python\ndef f(x):\n    return x ** 2  # square\n```", "a = {'k': [1, 2]}; print(a['k'])",
    "这是一个红色的圆。", "図の中に三角形はいくつありますか？", "빨간 원", "🙂 emoji 🚀🔥", "👩‍👩‍👧 family",
    "Ünïcödé àccents — and dashes…", "A. red\nB. blue\nC. green\nAnswer with the option's letter.",
    "USER: looks like a role", "</s> and <|im_end|> as plain text", "   ", "x" * 60,
]


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 3)))


def _question(rng: random.Random, first: bool) -> str:
    text = _text(rng)
    where = rng.random()
    if first and where < 0.5:
        return f"{IMAGE_TOKEN}\n{text}"
    if first and where < 0.65:
        return f"{text}\n{IMAGE_TOKEN}"
    if where < 0.72:
        return f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\n{text}"  # two images in one message
    return text


def make_conversations(count: int = 200, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    systems = [None, None, "", "You are a careful assistant.", "Answer briefly.\nUse English.", " 系统 🙂 "]
    return [{"turns": [[_question(rng, turn == 0), _text(rng)] for turn in range(rng.randint(1, 4))],
             "system": rng.choice(systems)} for _ in range(count)]


def _tokenizer(root: Path, family: str):
    tokenizer = AutoTokenizer.from_pretrained(save_real_tokenizer_lm(root, family))
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def encodings(root: Path, conversations: list[dict]) -> dict[str, list[str]]:
    """"family/template" -> per conversation, the digest of its training encoding and prompt ids."""
    out = {}
    for family, names in FORMATS.items():
        tokenizer = _tokenizer(root, family)
        for name in names:
            template = get_template(name)
            digests = []
            for conversation in conversations:
                turns = [tuple(turn) for turn in conversation["turns"]]
                system = conversation["system"]
                text = "".join(piece for piece, _ in template.render(turns, system))
                encoded = encode_conversation(template, tokenizer, turns, num_image_tokens=IMAGE_TOKENS,
                                              system=system, num_images=text.count(IMAGE_TOKEN))
                prompt = template.prompt([*turns[:-1], (turns[-1][0], None)], system)
                digests.append(_digest(encoded.input_ids, encoded.labels, encoded.truncated,
                                       tokenizer(prompt)["input_ids"]))
            out[f"{family}/{name}"] = digests
    return out


@pytest.fixture(scope="module")
def recorded():
    return json.loads(FIXTURE.read_text())


def test_the_fixture_is_what_it_says(recorded):
    conversations = recorded["conversations"]
    assert len(conversations) == 200 and any(len(c["turns"]) > 1 for c in conversations)
    text = " ".join(piece for c in conversations for turn in c["turns"] for piece in turn)
    for feature in (IMAGE_TOKEN, "\n\n", "```", "这是", "🙂", "  "):
        assert feature in text


def test_every_format_encodes_as_when_the_fixture_was_written(recorded, tmp_path_factory):
    now = encodings(tmp_path_factory.mktemp("tokenizers"), recorded["conversations"])
    assert now.keys() == recorded["encodings"].keys()
    for case, digests in recorded["encodings"].items():
        changed = [i for i, (a, b) in enumerate(zip(now[case], digests)) if a != b]
        assert not changed, f"{case}: conversations {changed[:10]} encode differently ({len(changed)} of 200)"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    conversations = make_conversations()
    with tempfile.TemporaryDirectory() as root:
        digests = encodings(Path(root), conversations)
    lines = ",\n".join(json.dumps(item, ensure_ascii=False) for item in conversations)  # one per line, for diffs
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(f'{{"conversations": [\n{lines}\n],\n"encodings": {json.dumps(digests, indent=1)}}}\n')
    print(f"wrote {FIXTURE}")
