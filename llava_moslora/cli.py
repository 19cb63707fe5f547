"""The `llava-moslora` command: a thin dispatcher to the rooms' entry points.

Each subcommand lives in its room as a module with `add_arguments(parser, name)` and
`run(args, name) -> int` (or, for commands that parse their own flags, `main(argv) -> int`);
it is imported only when chosen, so `llava-moslora --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# name -> (module, one-line help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("llava_moslora.data.synth",
              "generate ShapesVQA: images, stage-1/2 training data and held-out VLMEvalKit-format benchmarks"),
    "pretrain-bases": ("llava_moslora.model.bases",
                       "pretrain the tiny CLIP tower and Llama the quickstart starts from, on ShapesVQA's domain"),
    "init-tiny": ("llava_moslora.model.tiny",
                  "write a tiny CLIP tower and a tiny Llama (tokenizer trained on the data) as save_pretrained dirs"),
    "validate-data": ("llava_moslora.validate_data",
                      "scan a LLaVA-format dataset for every fault (by sample id) before a run; --write-clean keeps the valid ones"),
    "train": ("llava_moslora.train.main",
              "train one stage (run under torchrun or deepspeed; see scripts/pretrain.sh, finetune.sh)"),
    "merge": ("llava_moslora.model.export",
              "fold lora/moslora adapters into a standalone llava-hf directory"),
    "export-peft": ("llava_moslora.model.export",
                    "write lora/moslora adapters as a PEFT LoRA adapter plus the tuned projector"),
    "eval": ("llava_moslora.evaluation.runner",
             "run VLMEvalKit benchmarks (or local MCQ / yes-no TSVs offline) on a checkpoint"),
    "vlmeval": ("llava_moslora.evaluation.vlmeval_run",
                "run VLMEvalKit's own run.py with checkpoints as --model llava_moslora:CKPT (judges, --reuse, torchrun)"),
    "study": ("llava_moslora.study.driver",
              "compare adapters: a grid of stage-2 runs (equal budgets, same data, LR search, seeds), scored and reported"),
    "abilities": ("llava_moslora.evaluation.abilities",
                  "per-ability scores of evaluated checkpoints, normalized across them: JSON, Markdown, radar plots"),
    "chat": ("llava_moslora.serve.chat",
             "talk with a checkpoint about an image: streaming, multi-turn, /image /reset /exit; --prompt for scripts"),
    "web": ("llava_moslora.serve.web",
            "the chat in a browser (Gradio, one process): upload an image, ask, streamed answers; several --model side by side"),
    "quickstart": ("llava_moslora.quickstart",
                   "run scripts/quickstart.sh: ShapesVQA, tiny bases, both stages, evaluation, sample answers"),
    "env": ("llava_moslora.envinfo",
            "print the versions of the stack and the accelerators it sees (paste into bug reports)"),
}
# Commands that parse their own arguments (HfArgumentParser): they get the rest of argv.
PASSTHROUGH = {"train"}


def build_parser(chosen: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava-moslora",
        description="LLaVA visual instruction tuning with MoSLoRA and MoE-LoRA adapters. "
                    "Run `llava-moslora COMMAND --help` for a command's options.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(command, name)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in PASSTHROUGH and argv[0] == chosen:
        return importlib.import_module(SUBCOMMANDS[chosen][0]).main(argv[1:])
    parser = build_parser(chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return importlib.import_module(SUBCOMMANDS[args.command][0]).run(args, args.command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
