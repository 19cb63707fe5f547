"""A model directory's own Jinja chat template as a conversation Template.

A llava-hf directory this project did not write (a Qwen- or Llama-3-based LLaVA, llava-hf's own
Vicuna ones) carries the chat template it was trained with. `template_for` recognises it as one
of templates.py's formats when it renders exactly as one does, and otherwise wraps the Jinja
itself: the prompt is what `apply_chat_template` gives, and a reply's loss-bearing text is what
the template marks with `{% generation %}`, or, in a template without marks, what it adds
between the open prompt and the finished turn; so training labels and the inference prompt come
from the same rendering.
"""
from __future__ import annotations

import re
from typing import Optional

from ..names import OWN_TEMPLATE  # Recipe.template of a directory prompted with its own Jinja template
from .templates import IMAGE_TOKEN, PAPER_FORMATS, TEMPLATES, Segments, Template, Turns, get_template, marked_segments

_MARKS = re.compile(r"\{%-?\s*generation\s*-?%\}")  # as transformers finds them
_PROBE: Turns = [(f"{IMAGE_TOKEN}\nWhat is shown?", "A red circle."), ("And its size?", None)]


class ChatTemplateError(ValueError):
    """The directory's chat template cannot render a conversation the way training needs."""


def _messages(turns: Turns, system: Optional[str], upto: int, with_reply: bool) -> list[dict]:
    """Chat messages of turns[:upto + 1], images as {"type": "image"} parts before the text (as
    llava-hf templates expect); the last turn's reply only when `with_reply`."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    for index, (question, reply) in enumerate(turns[:upto + 1]):
        images = question.count(IMAGE_TOKEN)
        text = question.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, "")
        messages.append({"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]})
        if reply is not None and (index < upto or with_reply):
            messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
    return messages


def _renderer(tokenizer):
    jinja = tokenizer.chat_template
    # the tokenizer adds BOS itself when encoding (as with every template here)
    bos = (tokenizer.bos_token or "") if getattr(tokenizer, "add_bos_token", True) else ""

    if _MARKS.search(jinja):
        def render_marked(turns: Turns, system: Optional[str]) -> Segments:
            return marked_segments(jinja, _messages(turns, system, len(turns) - 1, True),
                                   open_reply=turns[-1][1] is None, strip_prefix=bos, **tokenizer.special_tokens_map)
        return render_marked

    def apply(messages: list[dict], open_reply: bool) -> str:
        text = tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False,
                                             add_generation_prompt=open_reply)
        return text[len(bos):] if bos and text.startswith(bos) else text

    def render(turns: Turns, system: Optional[str]) -> Segments:
        segments, done = [], ""
        for index, (_, reply) in enumerate(turns):
            for text, carries_loss in ((apply(_messages(turns, system, index, False), True), False),
                                       *([(apply(_messages(turns, system, index, True), False), True)]
                                         if reply is not None else [])):
                if not text.startswith(done):
                    raise ChatTemplateError("the chat template renders a conversation differently once it goes on "
                                            "(a turn changes the text before it); pass --template instead")
                segments.append((text[len(done):], carries_loss))
                done = text
        return segments
    return render


def _end_of_turn(tokenizer) -> str:
    """The marker the template closes a reply with (a single token), else the EOS token."""
    reply = "REPLY-MARKER"
    text = tokenizer.apply_chat_template(_messages([("Hi", reply)], None, 0, True), chat_template=tokenizer.chat_template,
                                         tokenize=False)
    after = text[text.rfind(reply) + len(reply):].strip().split()
    if after:
        ids = tokenizer.encode(after[0], add_special_tokens=False)
        if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
            return after[0]
    return tokenizer.eos_token or ""


def own_template(tokenizer) -> Template:
    """The tokenizer's chat template as a Template (ChatTemplateError when it has none)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("no chat template")
    return Template(OWN_TEMPLATE, tokenizer.chat_template, _end_of_turn(tokenizer), renderer=_renderer(tokenizer))


def recognise(tokenizer) -> Optional[str]:
    """The name of the template in templates.py that renders as the tokenizer's chat template
    does (on a two-turn conversation with an image), else None; a paper's format only by name."""
    try:
        theirs = "".join(text for text, _ in own_template(tokenizer).render(_PROBE))
    except Exception:  # noqa: BLE001 - a template that cannot render the probe is nobody's
        return None
    for name, template in TEMPLATES.items():
        if name != "plain" and name not in PAPER_FORMATS and "".join(text for text, _ in template.render(_PROBE)) == theirs:
            return name
    return None


def template_for(name: str, tokenizer) -> Template:
    """The Template a recipe names: one of templates.py's, or OWN_TEMPLATE (the tokenizer's chat template)."""
    return own_template(tokenizer) if name == OWN_TEMPLATE else get_template(name)
