"""Conversation formats, each defined once: as the Jinja chat template saved into checkpoints.

A format's Jinja marks what training predicts (each assistant reply and its end-of-turn marker;
in `plain`, the caption and its newline) between `{% generation %}` and `{% endgeneration %}`,
the marks transformers reads for `apply_chat_template(return_assistant_tokens_mask=True)`.
`Template.render` renders a conversation through it into segments of text, each marked as
loss-bearing or not, so training labels (tokenize.py), the prompts chat, eval and web generate
from, and the checkpoint's `chat_template.json` (read by `processor.apply_chat_template`, vLLM's
and SGLang's OpenAI servers, VLMEvalKit's `--base-url` route) are one rendering.

Messages are {"role", "content"}; content is a string or a list of {"type": "image"} /
{"type": "text", "text": ...} parts. Training passes strings, whose `<image>` placeholders stay
where the data put them; a list puts its images first, each as "<image>\\n", as LLaVA's data and
llava-hf's own templates do, and joins its text parts by "\\n". The tokenizer adds BOS itself.
A user turn ends with the opening of the assistant's, so a prompt ends where the reply starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

IMAGE_TOKEN = "<image>"

# A conversation after normalisation: (user message, assistant reply) pairs; the reply of the
# last pair may be None when rendering a prompt for generation.
Turns = list[tuple[str, Optional[str]]]
Segments = list[tuple[str, bool]]  # (text, carries loss)


def _quote(text: str) -> str:
    """`text` as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# content -> text, images first; `system` and `loop_messages` split off a leading system message
# (none: the format's default system prompt)
_PREAMBLE = """\
{%- macro render(content) -%}
{%- if content is string -%}{{ content }}
{%- else -%}
{%- for part in content if part['type'] == 'image' -%}""" + "{{ " + _quote(IMAGE_TOKEN + "\n") + " }}" + """{%- endfor -%}
{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- if messages[0]['role'] == 'system' -%}
{%- set system = render(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set system = DEFAULT_SYSTEM -%}{%- set loop_messages = messages -%}
{%- endif -%}
"""


def _between(before: str, value: str, after: str) -> str:
    return "{{ " + _quote(before) + " + " + value + " + " + _quote(after) + " }}"


def _turns(system: tuple[str, str], user: tuple[str, str], reply: tuple[str, str], after_reply: str = "") -> str:
    """A turn-based format: the system text, each user message and each assistant reply between
    its (before, after) strings; the reply's are trained, `after_reply` (formatting) is not."""
    content = "render(message['content'])"
    return ("{%- if system -%}" + _between(system[0], "system", system[1]) + "{%- endif -%}\n"
            "{%- for message in loop_messages -%}\n"
            "{%- if message['role'] == 'user' -%}" + _between(user[0], content, user[1]) + "\n"
            "{%- elif message['role'] == 'assistant' -%}{% generation %}" + _between(reply[0], content, reply[1])
            + "{% endgeneration %}" + ("{{ " + _quote(after_reply) + " }}" if after_reply else "") + "\n"
            "{%- endif -%}\n{%- endfor -%}\n")


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


# "{system} USER: {q} ASSISTANT: {a}</s>USER: ..." (LLaVA-1.5's conv_vicuna_v1). The space before
# a reply belongs to the reply, so the prompt ends with "ASSISTANT:" as at inference.
_VICUNA_V1 = _turns(("", " "), ("USER: ", " ASSISTANT:"), (" ", "</s>"))
# Llama 3 instruct; the tokenizer itself adds <|begin_of_text|>.
_LLAMA3 = _turns((_header("system"), "<|eot_id|>"), (_header("user"), "<|eot_id|>" + _header("assistant")),
                 ("", "<|eot_id|>"))
# ChatML as Qwen2 uses it; the newline after <|im_end|> is formatting, not a prediction target.
_CHATML = _turns(("<|im_start|>system\n", "<|im_end|>\n"), ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
                 ("", "<|im_end|>"), after_reply="\n")
# LLaVA's stage-1 format: the prompt is only the image (the question, when there is none); the
# caption and a newline are trained.
_PLAIN = """\
{%- for message in loop_messages[:2] -%}
{%- if message['role'] == 'user' -%}
{%- set text = render(message['content']) -%}{{ """ + _quote(IMAGE_TOKEN) + " if " + _quote(IMAGE_TOKEN) + """ in text else text }}
{%- elif message['role'] == 'assistant' -%}{% generation %}{{ render(message['content']) + '\\n' }}{% endgeneration %}
{%- endif -%}
{%- endfor -%}
"""
# THUDM/MoELoRA_Riemannian's train_llava.py on llava-1.5-7b-hf: "USER: <image>\n{q}\n{options}\n
# \nASSISTANT:" then the reply with no space before it and no end-of-turn token; a newline
# between turns; no system prompt.
_MOELORA_LLAVA = """\
{%- for message in loop_messages -%}
{%- if message['role'] == 'user' -%}{{ ('' if loop.first else '\\n') + 'USER: ' + render(message['content']) + '\\n\\nASSISTANT:' }}
{%- elif message['role'] == 'assistant' -%}{% generation %}{{ render(message['content']) }}{% endgeneration %}
{%- endif -%}
{%- endfor -%}
"""


def marked_segments(chat_template: str, messages: list[dict], open_reply: bool = False, strip_prefix: str = "",
                    **template_kwargs) -> Segments:
    """The text a chat template renders `messages` into, cut at its generation marks (the marked
    spans carry loss); `open_reply` adds the generation prompt, `strip_prefix` is cut off the front
    (a BOS the template writes and the tokenizer adds again); `template_kwargs` are the variables
    the template reads besides the messages (a tokenizer's special tokens)."""
    from transformers.utils.chat_template_utils import render_jinja_template  # jinja2 only when rendering

    (text,), (spans,) = render_jinja_template([messages], chat_template=chat_template, add_generation_prompt=open_reply,
                                              return_assistant_tokens_mask=True, **template_kwargs)
    cut = len(strip_prefix) if strip_prefix and text.startswith(strip_prefix) else 0
    segments, position = [], cut
    for start, end in spans:
        segments += [(text[position:start], False), (text[start:end], True)]
        position = end
    segments.append((text[position:], False))
    return [segment for segment in segments if segment[0]]


def _as_messages(turns: Turns, system: Optional[str]) -> list[dict]:
    # string contents, so every <image> stays where the data put it
    messages = [{"role": "system", "content": system}] if system is not None else []
    for question, reply in turns:
        messages.append({"role": "user", "content": question})
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
    return messages


@dataclass(frozen=True)
class Template:
    """A named conversation format.

    `chat_template` is its Jinja definition (replies between generation marks); `end_of_turn` is
    the marker that closes an assistant reply (it must be a single token of the tokenizer) and
    stops generation; `default_system` is the system prompt used when none is given. A foreign
    chat template without marks brings its own `renderer` (own_chat_template.py).
    """

    name: str
    chat_template: str
    end_of_turn: str
    default_system: str = ""
    renderer: Optional[Callable[[Turns, Optional[str]], Segments]] = None

    def render(self, turns: Turns, system: Optional[str] = None) -> Segments:
        """Segments of `turns` (system None: the format's default system prompt)."""
        if not turns:
            raise ValueError("a conversation needs at least one user turn")
        for i, (_, reply) in enumerate(turns[:-1]):
            if reply is None:
                raise ValueError(f"turn {i} has no assistant reply; only the last may be open")
        if self.renderer is not None:
            return self.renderer(turns, system)
        return marked_segments(self.chat_template, _as_messages(turns, system))

    def prompt(self, turns: Turns, system: Optional[str] = None) -> str:
        """The text up to where the assistant's next reply starts (for generation)."""
        if turns[-1][1] is not None:
            raise ValueError("prompt() needs a conversation whose last reply is open (None)")
        return "".join(text for text, _ in self.render(turns, system))


def _format(name: str, body: str, end_of_turn: str, default_system: str = "") -> Template:
    jinja = "{%- set DEFAULT_SYSTEM = " + _quote(default_system) + " -%}\n" + _PREAMBLE + body
    return Template(name, jinja, end_of_turn, default_system)


VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

TEMPLATES: dict[str, Template] = {
    t.name: t for t in (
        _format("plain", _PLAIN, "\n"),
        _format("vicuna_v1", _VICUNA_V1, "</s>", VICUNA_SYSTEM),
        _format("llama3", _LLAMA3, "<|eot_id|>"),
        _format("chatml", _CHATML, "<|im_end|>", "You are a helpful assistant."),
        # XTuner's LLaVA formats (the MoSLoRA paper's runs): its llama3_chat and internlm2_chat,
        # which LLaVA training uses without a system prompt; BOS from the tokenizer, as XTuner adds it.
        _format("llama3_chat", _LLAMA3, "<|eot_id|>"),
        _format("internlm2_chat", _CHATML, "<|im_end|>"),
        # The MoE-LoRA paper's code: no end-of-reply token is trained, so generation runs to its limit.
        _format("moelora_llava", _MOELORA_LLAVA, ""),
    )
}


# Formats named after a paper's code: chosen by name, never what a foreign chat template is taken
# for (a ChatML template without a default system prompt is not InternLM2's because it renders alike).
PAPER_FORMATS = frozenset({"llama3_chat", "internlm2_chat", "moelora_llava"})


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; available: {', '.join(TEMPLATES)}") from None
