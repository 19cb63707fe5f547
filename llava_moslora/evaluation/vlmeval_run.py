"""`llava-moslora vlmeval`: VLMEvalKit's own run.py, in this process, with our checkpoints registered.

    llava-moslora vlmeval --run-py VLMEvalKit/run.py -- --data MMBench_DEV_EN MME --model llava_moslora:CKPT

run.py finds models in two registries: `vlmeval.config.supported_VLM` (name -> constructor, for
`--model NAME`) and the classes of `vlmeval.vlm` (for `--config` entries with "class"). Our model
class is made at run time, so this command puts it in both before running run.py as `__main__`:
every `--model llava_moslora:[NAME=]PATH` becomes the model NAME (default: the checkpoint
directory's name, as `llava-moslora eval` names result files), and `vlmeval.vlm.LlavaMoSLoRA` is
the class for `{"class": "LlavaMoSLoRA", "model_path": PATH, "dtype": "bf16"}` config entries.
Everything else (per-dataset judges, --reuse, --mode, --data-config, status reports, torchrun)
is run.py's own.
"""
from __future__ import annotations

import argparse
import functools
import runpy
import sys
from pathlib import Path
from typing import Optional, Sequence

PREFIX = "llava_moslora:"
CLASS_NAME = "LlavaMoSLoRA"


class SpecError(ValueError):
    """A --model llava_moslora:... entry that cannot be registered."""


def parse_spec(value: str) -> tuple[str, Path]:
    """"llava_moslora:[NAME=]PATH" -> (NAME, PATH); NAME defaults to the directory's name."""
    body = value[len(PREFIX):]
    name, _, path = body.rpartition("=") if "=" in body else ("", "", body)
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SpecError(f"{value}: checkpoint directory not found: {path}")
    name = name or path.resolve().name
    if not name or "/" in name:
        raise SpecError(f"{value}: {name!r} cannot name result folders; write llava_moslora:NAME=PATH")
    return name, path.resolve()


def model_values(argv: Sequence[str]) -> list[int]:
    """Positions of the values of run.py's `--model` (nargs='+': up to the next option)."""
    positions, inside = [], False
    for i, arg in enumerate(argv):
        if arg == "--model":
            inside = True
        elif arg.startswith("-"):
            inside = False
        elif inside:
            positions.append(i)
    return positions


def register(argv: Sequence[str], registry: dict, vlm_module, model_class: type, dtype: str,
             device: Optional[str]) -> list[str]:
    """Put our class in `vlm_module` and every llava_moslora: model in `registry`; returns argv
    with those models replaced by their registered names."""
    setattr(vlm_module, CLASS_NAME, model_class)
    argv, taken = list(argv), {}
    for i in model_values(argv):
        if not argv[i].startswith(PREFIX):
            continue
        name, path = parse_spec(argv[i])
        if taken.get(name, path) != path:
            raise SpecError(f"two checkpoints would both be named {name!r} ({taken[name]} and {path}); "
                            "name them: llava_moslora:NAME=PATH")
        if name in registry and name not in taken:
            raise SpecError(f"{name!r} is one of VLMEvalKit's own models; name yours: llava_moslora:NAME={path}")
        taken[name] = path
        registry[name] = functools.partial(model_class, model_path=str(path), dtype=dtype, device=device)
        argv[i] = name
        print(f"[llava-moslora] --model {name}: {path}")
    return argv


def gloo_without_cuda(init_process_group):
    """run.py asks for NCCL under torchrun; on a machine without CUDA use gloo so the same
    command runs (slowly) on CPUs."""
    @functools.wraps(init_process_group)
    def init(*args, **kwargs):
        import torch

        if not torch.cuda.is_available():
            if args:
                args = ("gloo", *args[1:])
            else:
                kwargs["backend"] = "gloo"
        return init_process_group(*args, **kwargs)
    return init


def run_vlmevalkit(run_py: Path, argv: Sequence[str], dtype: str = "auto", device: Optional[str] = None) -> None:
    run_py = Path(run_py).expanduser().resolve()
    if not run_py.is_file():
        raise SpecError(f"{run_py} not found: pass the run.py of a VLMEvalKit checkout (--run-py)")
    sys.path.insert(0, str(run_py.parent))  # as `python run.py` would: a clone that is not pip-installed works
    from .toolkit import import_vlmeval_quietly
    from .vlm import model_class

    import_vlmeval_quietly()
    import torch.distributed
    import vlmeval.config
    import vlmeval.vlm

    argv = register(argv, vlmeval.config.supported_VLM, vlmeval.vlm, model_class(True), dtype, device)
    torch.distributed.init_process_group = gloo_without_cuda(torch.distributed.init_process_group)
    sys.argv = [str(run_py), *argv]
    runpy.run_path(str(run_py), run_name="__main__")


def add_arguments(parser: argparse.ArgumentParser, name: str = "vlmeval") -> None:
    parser.epilog = ("example: llava-moslora vlmeval --run-py ~/VLMEvalKit/run.py -- --data MMBench_DEV_EN MME "
                     "--model llava_moslora:runs/quickstart/stage2 --work-dir outputs")
    parser.add_argument("--run-py", "--run_py", dest="run_py", required=True, help="VLMEvalKit's run.py")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="weights dtype of --model llava_moslora:... entries (auto: bf16 on GPUs that have it)")
    parser.add_argument("--device", default=None, help="cuda / cpu for those models (default: CUDA when present)")
    parser.add_argument("run_py_args", nargs=argparse.REMAINDER,
                        help="after --: run.py's own arguments; models as llava_moslora:[NAME=]CHECKPOINT")


def run(args: argparse.Namespace, name: str = "vlmeval") -> int:
    argv = list(args.run_py_args)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    try:
        run_vlmevalkit(args.run_py, argv, args.dtype, args.device)
    except SpecError as error:
        print(f"llava-moslora vlmeval: {error}", file=sys.stderr)
        return 2
    return 0
