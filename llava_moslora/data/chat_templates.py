"""The conversation templates of templates.py as Jinja chat templates, for checkpoints' processors.

Saved with every stage checkpoint and merged directory, so `processor.apply_chat_template`,
vLLM's and SGLang's OpenAI servers and VLMEvalKit's `--base-url` route build the very prompt the
model was trained on (tests/data/test_chat_templates.py checks token equality against
encode_conversation). Messages are {"role", "content"}; content is a string or a list of
{"type": "image"} / {"type": "text", "text": ...} parts. Images come first in a message, each as
"<image>\\n" (templates.IMAGE_TOKEN), as in LLaVA's data and llava-hf's own template; text parts are joined by "\\n".
The tokenizer adds BOS itself (add_special_tokens), as in training.
"""
from __future__ import annotations

from .templates import get_template

# content -> text, images first; `system` and `loop_messages` split off a leading system message.
_PREAMBLE = """\
{%- macro render(content) -%}
{%- if content is string -%}{{ content }}
{%- else -%}
{%- for part in content if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}
{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- if messages[0]['role'] == 'system' -%}
{%- set system = render(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set system = DEFAULT_SYSTEM -%}{%- set loop_messages = messages -%}
{%- endif -%}
"""

def _quote(text: str) -> str:
    """`text` as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _turns(system: tuple[str, str], user: tuple[str, str], assistant: tuple[str, str]) -> str:
    """A turn-based format: the system text, each user message and each assistant reply between
    its (before, after) strings; the user's `after` opens the assistant's turn, so a prompt ends
    where the reply starts, as in templates.py."""
    def emit(value: str, pieces: tuple[str, str]) -> str:
        return "{{ " + _quote(pieces[0]) + " + " + value + " + " + _quote(pieces[1]) + " }}"
    content = "render(message['content'])"
    return ("{%- if system -%}" + emit("system", system) + "{%- endif -%}\n"
            "{%- for message in loop_messages -%}\n"
            "{%- if message['role'] == 'user' -%}" + emit(content, user) + "\n"
            "{%- elif message['role'] == 'assistant' -%}" + emit(content, assistant) + "\n"
            "{%- endif -%}\n{%- endfor -%}\n")


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


_BODIES = {
    # "{system} USER: {q} ASSISTANT: {a}</s>USER: ..."
    "vicuna_v1": _turns(("", " "), ("USER: ", " ASSISTANT:"), (" ", "</s>")),
    "llama3": _turns((_header("system"), "<|eot_id|>"), (_header("user"), "<|eot_id|>" + _header("assistant")),
                     ("", "<|eot_id|>")),
    "chatml": _turns(("<|im_start|>system\n", "<|im_end|>\n"),
                     ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"), ("", "<|im_end|>\n")),
    # Stage 1: the prompt is the image alone; the caption and a newline follow.
    "plain": """\
{%- for message in loop_messages[:2] -%}
{%- if message['role'] == 'user' -%}
{%- set text = render(message['content']) -%}{{ '<image>' if '<image>' in text else text }}
{%- elif message['role'] == 'assistant' -%}{{ render(message['content']) + '\\n' }}
{%- endif -%}
{%- endfor -%}
""",
}


# XTuner's formats are ours with no default system prompt (templates.py)
_BODIES.update(llama3_chat=_BODIES["llama3"], internlm2_chat=_BODIES["chatml"])
# The MoE-LoRA code's: a newline between turns, none after the last reply, no system prompt
_BODIES["moelora_llava"] = """\
{%- for message in loop_messages -%}
{%- if message['role'] == 'user' -%}{{ ('' if loop.first else '\\n') + 'USER: ' + render(message['content']) + '\\n\\nASSISTANT:' }}
{%- elif message['role'] == 'assistant' -%}{{ render(message['content']) }}
{%- endif -%}
{%- endfor -%}
"""


def chat_template(name: str) -> str:
    """The Jinja chat template of the conversation template `name`."""
    template = get_template(name)
    if template.name not in _BODIES:
        raise ValueError(f"template {name!r} has no chat template")
    return "{%- set DEFAULT_SYSTEM = " + _quote(template.default_system) + " -%}\n" + _PREAMBLE + _BODIES[template.name]
