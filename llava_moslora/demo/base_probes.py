"""What a pretrained base language model can already do, text only, on fresh scenes: greedy
answers to multiple-choice questions and to lookups asked in words (pretraining.json's
`text_mcq_accuracy` and `text_lookup_accuracy`)."""
from __future__ import annotations

import torch

from ..data.templates import get_template
from . import base_corpus as corpus
from .scenes import DESCRIBE, as_mcq, caption, place_of, questions


@torch.no_grad()
def text_lookup_accuracy(model, tokenizer, rng, count: int) -> dict[str, float]:
    """Greedy answers in words on fresh scenes: where a named object is, the colour of a shape
    that occurs once, and the whole description (exact), the lookups free-form questions need."""
    scenes = corpus.base_scenes(rng)
    right: dict[str, list[bool]] = {"place": [], "color": [], "describe": []}
    model.eval()

    def ask(scene, question: str, tokens: int) -> str:
        return _greedy_reply(model, tokenizer, f"{corpus.object_words(scene)}\n{question}", tokens)

    for _ in range(count):
        scene = next(scenes)
        item = rng.choice(scene)
        right["place"].append(ask(scene, f"Where is the {item.name}?", 4).lower() == f"{place_of(item)}.")
        if sum(s.shape == item.shape for s in scene) == 1:
            right["color"].append(ask(scene, f"What color is the {item.shape}?", 3).lower() == f"{item.color}.")
        right["describe"].append(ask(scene, DESCRIBE, 64) == caption(scene))
    return {k: round(sum(v) / len(v), 4) for k, v in right.items() if v}


@torch.no_grad()
def text_mcq_accuracy(model, tokenizer, rng, count: int) -> dict[str, float]:
    """Greedy answers to text-only multiple-choice questions about described scenes, overall, per
    question family and per form of the scene ("form: ..."): what the language model can already
    read before it sees an image."""
    scenes = corpus.base_scenes(rng)
    right: dict[str, list[bool]] = {}
    model.eval()
    for _ in range(count):
        scene = next(scenes)
        question = rng.choice(questions(scene, rng))
        prompt, _, letter = as_mcq(question, rng)
        form, described = corpus.describe_as(scene, rng)
        hit = _greedy_reply(model, tokenizer, f"{described}\n{prompt}", 3) == letter
        for key in ("overall", question.category, f"form: {form}"):
            right.setdefault(key, []).append(hit)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(right.items(), key=lambda kv: kv[0] != "overall")}


def _greedy_reply(model, tokenizer, question: str, tokens: int) -> str:
    """The model's greedy reply to one user turn in the pretraining format, stopped at its end of turn."""
    template = get_template(corpus.TEMPLATE)
    eos = tokenizer.convert_tokens_to_ids(template.end_of_turn)
    ids = tokenizer(template.prompt([(question, None)]), return_tensors="pt").input_ids.to(model.device)
    out = model.generate(ids, max_new_tokens=tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
