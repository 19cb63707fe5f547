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

_BODIES = {
    # "{system} USER: {q} ASSISTANT: {a}</s>USER: ..."; the prompt ends with "ASSISTANT:".
    "vicuna_v1": """\
{%- if system -%}{{ system + ' ' }}{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] == 'user' -%}{{ 'USER: ' + render(message['content']) + ' ASSISTANT:' }}
{%- elif message['role'] == 'assistant' -%}{{ ' ' + render(message['content']) + '</s>' }}
{%- endif -%}
{%- endfor -%}
""",
    "llama3": """\
{%- if system -%}{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' }}{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] == 'user' -%}
{{ '<|start_header_id|>user<|end_header_id|>\\n\\n' + render(message['content']) + '<|eot_id|>' }}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- elif message['role'] == 'assistant' -%}{{ render(message['content']) + '<|eot_id|>' }}
{%- endif -%}
{%- endfor -%}
""",
    "chatml": """\
{%- if system -%}{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] == 'user' -%}
{{ '<|im_start|>user\\n' + render(message['content']) + '<|im_end|>\\n<|im_start|>assistant\\n' }}
{%- elif message['role'] == 'assistant' -%}{{ render(message['content']) + '<|im_end|>\\n' }}
{%- endif -%}
{%- endfor -%}
""",
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

def chat_template(name: str) -> str:
    """The Jinja chat template of the conversation template `name`."""
    template = get_template(name)
    if template.name not in _BODIES:
        raise ValueError(f"template {name!r} has no chat template")
    system = template.default_system.replace("\\", "\\\\").replace("'", "\\'")
    return "{%- set DEFAULT_SYSTEM = '" + system + "' -%}\n" + _PREAMBLE + _BODIES[template.name]
