"""Conversation templates: how a conversation becomes one string, and which characters carry loss.

A template renders a conversation into segments of text, each marked as loss-bearing or not.
Only assistant replies and their end-of-turn marker carry loss (in `plain`, the caption and its
newline). Tokenisation happens once, on the whole string (see tokenize.py), so training and
generation see exactly the same tokens for the same text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

IMAGE_TOKEN = "<image>"

# A conversation after normalisation: (user message, assistant reply) pairs; the reply of the
# last pair may be None when rendering a prompt for generation.
Turns = list[tuple[str, Optional[str]]]
Segments = list[tuple[str, bool]]  # (text, carries loss)


@dataclass(frozen=True)
class Template:
    """A named conversation format.

    `render(turns, system)` returns the segments; `end_of_turn` is the marker that closes an
    assistant reply (it must be a single token of the tokenizer) and stops generation.
    """

    name: str
    default_system: str
    end_of_turn: str
    _render: Callable[[Turns, str, str], Segments]

    def render(self, turns: Turns, system: Optional[str] = None) -> Segments:
        if not turns:
            raise ValueError("a conversation needs at least one user turn")
        for i, (_, reply) in enumerate(turns[:-1]):
            if reply is None:
                raise ValueError(f"turn {i} has no assistant reply; only the last may be open")
        return self._render(turns, self.default_system if system is None else system, self.end_of_turn)

    def prompt(self, turns: Turns, system: Optional[str] = None) -> str:
        """The text up to where the assistant's next reply starts (for generation)."""
        if turns[-1][1] is not None:
            raise ValueError("prompt() needs a conversation whose last reply is open (None)")
        return "".join(text for text, _ in self.render(turns, system))


def _plain(turns: Turns, system: str, eot: str) -> Segments:
    # LLaVA's stage-1 format: the prompt is only the image; loss on the caption and its newline.
    question, caption = turns[0]
    prompt = IMAGE_TOKEN if IMAGE_TOKEN in question else question
    if caption is None:
        return [(prompt, False)]
    return [(prompt, False), (caption, True), (eot, True)]


def _vicuna_v1(turns: Turns, system: str, eot: str) -> Segments:
    # "{system} USER: {q} ASSISTANT: {a}</s>USER: ..." (LLaVA-1.5's conv_vicuna_v1). The space
    # before a reply belongs to the reply, so the prompt ends with "ASSISTANT:" as at inference.
    segments: Segments = [(f"{system} " if system else "", False)]
    for question, reply in turns:
        segments.append((f"USER: {question} ASSISTANT:", False))
        if reply is not None:
            segments += [(f" {reply}", True), (eot, True)]
    return segments


def _llama3(turns: Turns, system: str, eot: str) -> Segments:
    # Llama 3 instruct; the tokenizer itself adds <|begin_of_text|>.
    def header(role):
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"
    segments: Segments = [(f"{header('system')}{system}{eot}", False)] if system else []
    for question, reply in turns:
        segments.append((f"{header('user')}{question}{eot}{header('assistant')}", False))
        if reply is not None:
            segments += [(reply, True), (eot, True)]
    return segments


def _chatml(turns: Turns, system: str, eot: str) -> Segments:
    # ChatML as Qwen2 uses it; the newline after <|im_end|> is formatting, not a prediction target.
    segments: Segments = [(f"<|im_start|>system\n{system}{eot}\n", False)] if system else []
    for question, reply in turns:
        segments.append((f"<|im_start|>user\n{question}{eot}\n<|im_start|>assistant\n", False))
        if reply is not None:
            segments += [(reply, True), (eot, True), ("\n", False)]
    return segments


def _moelora_llava(turns: Turns, system: str, eot: str) -> Segments:
    # THUDM/MoELoRA_Riemannian's train_llava.py on llava-1.5-7b-hf: "USER: <image>\n{q}\n{options}\n
    # \nASSISTANT:" then the reply with no space before it and no end-of-turn token; no system prompt.
    segments: Segments = []
    for i, (question, reply) in enumerate(turns):
        segments.append((f"{chr(10) if i else ''}USER: {question}\n\nASSISTANT:", False))
        if reply is not None:
            segments += [(reply, True), (eot, True)]
    return segments


VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

TEMPLATES: dict[str, Template] = {
    t.name: t for t in (
        Template("plain", "", "\n", _plain),
        Template("vicuna_v1", VICUNA_SYSTEM, "</s>", _vicuna_v1),
        Template("llama3", "", "<|eot_id|>", _llama3),
        Template("chatml", "You are a helpful assistant.", "<|im_end|>", _chatml),
        # XTuner's LLaVA formats (the MoSLoRA paper's runs): its llama3_chat and internlm2_chat,
        # which LLaVA training uses without a system prompt; BOS from the tokenizer, as XTuner adds it.
        Template("llama3_chat", "", "<|eot_id|>", _llama3),
        Template("internlm2_chat", "", "<|im_end|>", _chatml),
        # The MoE-LoRA paper's code: no end-of-reply token is trained, so generation runs to its limit.
        Template("moelora_llava", "", "", _moelora_llava),
    )
}


# Formats named after a paper's code: chosen by name, never what a foreign chat template is taken
# for (a ChatML template without a default system prompt is not InternLM2's because it renders alike).
PAPER_FORMATS = frozenset({"llama3_chat", "internlm2_chat", "moelora_llava"})


# --template of chat, eval and web: what the flag means wherever it is offered.


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; available: {', '.join(TEMPLATES)}") from None
