"""Names and numbers several rooms share, defined once and importing nothing: the launch checks and
every command's --help read them without loading torch, transformers or a room."""

ADAPTER_KINDS = ("lora", "moslora", "moelora")
# data.templates.TEMPLATES holds each one's definition (tests/data/test_templates.py keeps the two equal)
TEMPLATE_NAMES = ("plain", "vicuna_v1", "llama3", "chatml", "llama3_chat", "internlm2_chat", "moelora_llava")
OWN_TEMPLATE = "chat_template"  # the template of a llava-hf directory prompted with its own Jinja chat template
TEMPLATE_HELP = ("conversation template to prompt with: vicuna_v1, llama3, chatml, XTuner's llama3_chat, internlm2_chat, "
                 "or moelora_llava (the MoE-LoRA paper's code) (default: the one the checkpoint was trained with; a "
                 "llava-hf directory of its own: its chat template)")
BITS = (4, 8, 16)  # the language model's weights: 4 / 8 bits (bitsandbytes) or 16 (no quantization)
BITS_HELP = "language model weights: 4 / 8 (bitsandbytes) or 16 (float) [as the checkpoint was trained]"
# The exit code of a run that stopped on a mistake it has said in one line (train.main); the
# launcher (train.launch) adds no crash report on top of it.
MISTAKE_EXIT_CODE = 2
