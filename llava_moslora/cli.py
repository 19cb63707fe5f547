"""The `llava-moslora` command: a thin dispatcher to the rooms' entry points.

Each subcommand lives in its room as a module with `add_arguments(parser, name)` and
`run(args, name) -> int` (or, for commands that parse their own flags, `main(argv) -> int`);
it is imported only when chosen, so `llava-moslora --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

# name -> (module, one-line help, group, example).
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "quickstart": ("llava_moslora.quickstart",
                   "run scripts/quickstart.sh: ShapesVQA, tiny bases, both stages, evaluation, sample answers",
                   "start", "llava-moslora quickstart --out runs/quickstart --seed 0"),
    "env": ("llava_moslora.envinfo",
            "print the versions of the stack and the accelerators it sees (paste into bug reports)",
            "start", "llava-moslora env --json"),
    "synth": ("llava_moslora.demo.synth",
              "generate ShapesVQA: images, stage-1/2 training data and held-out VLMEvalKit-format benchmarks",
              "data", "llava-moslora synth --out runs/shapes --seed 0"),
    "validate-data": ("llava_moslora.train.validate_data",
                      "scan a LLaVA-format dataset for every fault (by sample id) before a run; --write-clean keeps the valid ones",
                      "data", "llava-moslora validate-data --data_path mix665k.json --image_folder playground/data "
                              "--model_name_or_path lmsys/vicuna-7b-v1.5 --vision_tower openai/clip-vit-large-patch14-336"),
    "convert-data": ("llava_moslora.data.convert",
                     "write any data form training reads as one parquet file, messages + images, images inside",
                     "data", "llava-moslora convert-data --data_path instruct.json --image_folder images "
                             "--out instruct.parquet"),
    "prepare-mc": ("llava_moslora.data.mc_tasks",
                   "the MoE-LoRA paper's tasks (Visual7W, VMCBench) as training data and a benchmark TSV, split as its code",
                   "data", "llava-moslora prepare-mc --task vmcbench --source dev-00000-of-00001.parquet --out data/vmcbench"),
    "train": ("llava_moslora.train.main",
              "train one stage (run under torchrun or deepspeed; see scripts/pretrain.sh, finetune.sh)",
              "train", "bash scripts/finetune.sh --dry_run   # the scripts run `llava-moslora train` for you"),
    "merge": ("llava_moslora.model.export",
              "fold lora/moslora adapters into a standalone llava-hf directory",
              "train", "llava-moslora merge --checkpoint runs/quickstart/stage2 --out runs/quickstart/merged"),
    "export-peft": ("llava_moslora.model.export",
                    "write lora/moslora adapters as a PEFT LoRA adapter plus the tuned projector",
                    "train", "llava-moslora export-peft --checkpoint runs/quickstart/stage2 --base runs/quickstart/stage1-merged "
                             "--out runs/quickstart/peft"),
    "pretrain-bases": ("llava_moslora.demo.bases",
                       "pretrain the tiny CLIP tower and Llama the quickstart starts from, on ShapesVQA's domain",
                       "train", "llava-moslora pretrain-bases --out runs/bases"),
    "init-tiny": ("llava_moslora.demo.tiny",
                  "write a tiny CLIP tower and a tiny Llama (tokenizer trained on the data) as save_pretrained dirs",
                  "train", "llava-moslora init-tiny --data runs/shapes --out runs/tiny"),
    "eval": ("llava_moslora.evaluation.runner",
             "run VLMEvalKit benchmarks (or local MCQ / yes-no TSVs offline) on a checkpoint",
             "evaluate", "llava-moslora eval --model runs/quickstart/stage2 --benchmarks shapes "
                         "--data-root runs/quickstart/data --work-dir eval_results/stage2"),
    "vlmeval": ("llava_moslora.evaluation.vlmeval_run",
                "run VLMEvalKit's own run.py with checkpoints as --model llava_moslora:CKPT (judges, --reuse, torchrun)",
                "evaluate", "llava-moslora vlmeval --run-py VLMEvalKit/run.py -- --data MMStar "
                            "--model llava_moslora:runs/quickstart/stage2"),
    "abilities": ("llava_moslora.evaluation.abilities",
                  "per-ability scores of evaluated checkpoints, normalized across them: JSON, Markdown, radar plots",
                  "evaluate", "llava-moslora abilities eval_results/lora eval_results/moslora --out abilities"),
    "study": ("llava_moslora.study.driver",
              "compare adapters: a grid of stage-2 runs (equal budgets, same data, LR search, seeds), scored and reported",
              "evaluate", "llava-moslora study --grid studies/shapes.yaml --out runs/study --quick"),
    "chat": ("llava_moslora.serve.chat",
             "talk with a checkpoint about an image: streaming, multi-turn, /image /reset /exit; --prompt for scripts",
             "talk", "llava-moslora chat --model runs/quickstart/stage2 --image runs/quickstart/data/images/test_000000.png"),
    "web": ("llava_moslora.serve.web",
            "the chat in a browser (Gradio, one process): upload an image, ask, streamed answers; several --model side by side",
            "talk", "llava-moslora web --model runs/quickstart/stage2 --port 7860"),
}
GROUPS = {"start": "getting started", "data": "data", "train": "train and export", "evaluate": "evaluate and compare",
          "talk": "talk to a checkpoint"}


def command_list() -> str:
    """Every subcommand with its line, grouped."""
    width = max(map(len, SUBCOMMANDS)) + 2
    lines = ["commands:"]
    for group, title in GROUPS.items():
        lines.append(f"  {title}:")
        lines += [f"    {name:<{width}}{help_text}" for name, (_, help_text, in_group, _) in SUBCOMMANDS.items()
                  if in_group == group]
    return "\n".join(lines)


# Commands that parse their own arguments (HfArgumentParser): they get the rest of argv.
PASSTHROUGH = {"train"}


def build_parser(chosen: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava-moslora", usage="llava-moslora [-h] [--version] COMMAND ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="LLaVA visual instruction tuning with MoSLoRA and MoE-LoRA adapters.",
        epilog=command_list() + "\n\nRun `llava-moslora COMMAND --help` for a command's options and an example.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # the listing is the grouped epilog; argparse's own flat one is hidden
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)
    for name, (module_name, help_text, _, example) in SUBCOMMANDS.items():
        command = sub.add_parser(name, prog=f"llava-moslora {name}", help=help_text, description=help_text,
                                 epilog=f"example:\n  {example}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(command, name)
            accept_both_spellings(command)
    return parser


def accept_both_spellings(parser: argparse.ArgumentParser) -> None:
    """Every long option under both spellings, --max_new_tokens and --max-new-tokens (transformers'
    HfArgumentParser does the same for `train`); --help lists both."""
    for action in list(parser._actions):
        for option in list(action.option_strings):
            if not option.startswith("--"):
                continue
            name = option[2:]
            for twin in {"--" + name.replace("_", "-"), "--" + name.replace("-", "_")} - {option}:
                if twin not in parser._option_string_actions:
                    action.option_strings.append(twin)
                    parser._option_string_actions[twin] = action


def main(argv: Optional[Sequence[str]] = None) -> int:
    # bitsandbytes (imported with transformers' Trainer, QLoRA or not) warns on some CPUs that an
    # optional hub kernel is missing, then uses its own: nothing a user can act on (train.main
    # says the same), and it would be the first line of `study --help`.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in PASSTHROUGH and argv[0] == chosen:
        module = importlib.import_module(SUBCOMMANDS[chosen][0])
        return getattr(module, "run", module.main)(argv[1:])  # train's run: its mistakes said in one line
    parser = build_parser(chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return importlib.import_module(SUBCOMMANDS[args.command][0]).run(args, args.command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
