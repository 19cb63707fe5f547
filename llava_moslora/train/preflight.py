"""Launch checks: what the user named, checked before any process group starts or weight loads.

`python -m llava_moslora.train.preflight ARGS` takes the arguments `train` would get and exits 2
with one line per mistake: a flag of LLaVA's that means something else here (llava_flags.py); a
missing data path, image folder, stage-1 checkpoint, model or vision tower; an unknown adapter or
template; what ZeRO-3 rules out (--riemannian, --bits 4/8); an output directory that holds
another run. The stage scripts run it before the launcher, and say which of their variables gave
each flag (LLAVA_MOSLORA_VARIABLES="--data_path=DATA_PATH,..."); `train` runs the same checks
itself. It imports no torch and no transformers, so a mistake costs a second, not a model load.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..data.records import ACCEPTED, data_paths
from ..data.tables import is_table_source
from ..names import ADAPTER_KINDS, OWN_TEMPLATE, TEMPLATE_NAMES
from ..hub import CONFIG_FILES, looks_like_hub_id, snapshot
from ..towers import CLS_FIRST, NO_CLS, select_strategy
from .llava_flags import translate
from ..tokenizer_files import load_failure, missing_libraries, needs_conversion, tokenizer_format

PATH_FLAGS = ("--data_path", "--data_mixture", "--image_folder", "--pretrain_mm_mlp_adapter", "--model_name_or_path",
              "--vision_tower", "--adapter", "--template", "--output_dir", "--resume_from_checkpoint", "--report_to")
# transformers' --report_to integrations (transformers 5.23) -> the module each needs
TRACKERS = {"azure_ml": "azureml", "clearml": "clearml", "codecarbon": "codecarbon", "comet_ml": "comet_ml",
            "dagshub": "dagshub", "dvclive": "dvclive", "flyte": "flytekit", "kubeflow": "kubeflow", "mlflow": "mlflow",
            "neptune": "neptune", "swanlab": "swanlab", "tensorboard": "tensorboard", "trackio": "trackio",
            "wandb": "wandb"}
RUN_MARKERS = ("llava_moslora.json", "trainer_state.json")  # a stage checkpoint, or a run's state


class LaunchError(SystemExit):
    """A launch mistake, said in one line; exits 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


def flags_of(argv: Sequence[str]) -> tuple[dict[str, str], set[str]]:
    """The last value of each checked flag in `argv` (--flag value or --flag=value), and the
    flags given more than once (the last, from the command line, overrides the script's)."""
    found, repeated = {}, set()
    for i, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        name = "--" + name[2:].replace("-", "_") if name.startswith("--") else name  # HfArgumentParser takes both
        if name in PATH_FLAGS and (equals or i + 1 < len(argv)):
            if name in found:
                repeated.add(name)
            found[name] = value if equals else argv[i + 1]
    return found, repeated


def variables() -> dict[str, str]:
    """flag -> the script variable that gave it (from LLAVA_MOSLORA_VARIABLES)."""
    pairs = (item.split("=", 1) for item in os.environ.get("LLAVA_MOSLORA_VARIABLES", "").split(",") if "=" in item)
    return {flag: name for flag, name in pairs}


def named(flag: str, value: str, names: dict[str, str]) -> str:
    return f"{names[flag]}={value} ({flag})" if flag in names else f"{flag} {value}"


def problems(argv: Sequence[str], names: Optional[dict[str, str]] = None) -> list[str]:
    """Every launch mistake in `argv`, one line each."""
    names = variables() if names is None else names
    argv, _notes, found = translate(argv)  # LLaVA's flags: read as ours, or refused in one line each
    flags, repeated = flags_of(argv)
    names = {flag: name for flag, name in names.items() if flag not in repeated}

    def say(flag: str, problem: str) -> None:
        found.append(f"{named(flag, flags[flag], names)}: {problem}")

    for flag in ("--data_path", "--data_mixture"):
        if flag in flags:
            found += _data_problems(flag, flags[flag], names)
    if "--image_folder" in flags and not Path(flags["--image_folder"]).is_dir():
        say("--image_folder", "no such folder (the root the samples' image paths are relative to)")
    elif "--image_folder" in flags and not os.access(flags["--image_folder"], os.R_OK | os.X_OK):
        say("--image_folder", "not readable by this user")
    for flag in ("--pretrain_mm_mlp_adapter", "--model_name_or_path", "--vision_tower"):
        if flags.get(flag):
            problem = _model_problem(flags[flag], checkpoint=flag == "--pretrain_mm_mlp_adapter")
            if problem is None and flag == "--model_name_or_path":
                problem = _tokenizer_problem(flags[flag], trust_remote_code=flag_is_on(argv, "--trust_remote_code"))
            if problem is None and flag == "--vision_tower":
                problem = _feature_problem(flags[flag], flag_value(argv, "--mm_vision_select_feature"))
            if problem:
                say(flag, problem)
    if "--adapter" in flags and flags["--adapter"] not in ADAPTER_KINDS:
        say("--adapter", f"unknown adapter; accepted: {', '.join(ADAPTER_KINDS)}")
    if "--template" in flags and flags["--template"] not in (*TEMPLATE_NAMES, OWN_TEMPLATE):
        say("--template", f"unknown template; accepted: {', '.join(TEMPLATE_NAMES)}, {OWN_TEMPLATE} (the model's own)")
    if flags.get("--report_to"):
        problem = _tracker_problem(flags["--report_to"])
        if problem:
            say("--report_to", problem)
    found += _zero3_problems(argv)
    if "--output_dir" in flags and "--resume_from_checkpoint" not in flags and not flag_is_on(argv, "--dry_run"):
        problem = _output_problem(Path(flags["--output_dir"]))
        if problem:
            say("--output_dir", problem)
    return found


def zero_stage(deepspeed) -> int:
    """The ZeRO stage of a --deepspeed value (a config file's path or the config itself; 0 without)."""
    if not deepspeed:
        return 0
    config = deepspeed if isinstance(deepspeed, dict) else json.loads(Path(deepspeed).read_text())
    return int(config.get("zero_optimization", {}).get("stage", 0))


def _zero3_problems(argv: Sequence[str]) -> list[str]:
    """What ZeRO-3's partitioning rules out, said before the ranks start."""
    try:
        stage = zero_stage(flag_value(argv, "--deepspeed"))
    except (OSError, ValueError, AttributeError):  # no such file, or not a JSON object: DeepSpeed says so
        return []
    if stage != 3:
        return []
    found = []
    if flag_is_on(argv, "--riemannian"):
        found.append("--riemannian needs each adapter factor whole on every rank, which ZeRO-3 partitions; use "
                     "deepspeed_configs/zero2.json (ZeRO-2) with --riemannian.")
    bits = flag_value(argv, "--bits") or "16"
    if bits != "16":
        found.append(f"--bits {bits} under ZeRO-3: ZeRO-3 partitions every parameter, and bitsandbytes' packed "
                     "4/8-bit weights cannot be partitioned and gathered. QLoRA trains under ZeRO-2 (ZERO=2, "
                     "deepspeed_configs/zero2.json) or on one GPU.")
    return found


def _data_problems(flag: str, value: str, names: dict[str, str]) -> list[str]:
    if flag == "--data_mixture":
        from ..data.mixture import parse_mixture
        from ..data.records import DataError

        try:
            paths = [part.path for part in parse_mixture(value)]
        except DataError as error:
            return [f"{named(flag, value, names)}: {error}"]
    else:
        paths = [str(p) for p in data_paths(value)]
    missing = [p for p in paths if not Path(p).exists() and not is_table_source(p)]
    unreadable = [p for p in paths if Path(p).exists() and not os.access(p, os.R_OK)]
    return [f"{named(flag, value, names)}: {p} is no file or folder (and not a dataset id); give {ACCEPTED}"
            for p in missing] + [f"{named(flag, value, names)}: {p} is not readable by this user" for p in unreadable]


def _model_problem(value: str, checkpoint: bool) -> Optional[str]:
    path = Path(value).expanduser()
    if path.exists() and not os.access(path, os.R_OK):
        return "not readable by this user"
    if path.is_file():
        return None if checkpoint else "a file; give a model folder or hub id"
    if path.is_dir():
        markers = ("llava_moslora.json", "config.json")
        return None if any((path / m).is_file() for m in markers) else (
            "a folder with neither llava_moslora.json nor config.json: not a checkpoint or model folder")
    if not looks_like_hub_id(value):
        what = "a stage-1 checkpoint, projector file, merged folder or hub id" if checkpoint else "a folder or hub id"
        return f"no such file or folder; give {what}"
    try:
        snapshot(value, patterns=list(CONFIG_FILES))  # configs only: cheap online, the cache offline
    except FileNotFoundError as error:
        return str(error).split(": ", 1)[1]
    return None


def _folder(value: str) -> Optional[Path]:
    """The local folder of a model given as a folder or a (cached) hub id."""
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    try:
        return snapshot(value, patterns=list(CONFIG_FILES)) if looks_like_hub_id(value) else None
    except FileNotFoundError:
        return None


def _tokenizer_problem(value: str, trust_remote_code: bool = False) -> Optional[str]:
    """What keeps the language model's tokenizer from loading. Only files that transformers must
    convert (no tokenizer.json: a SentencePiece or tiktoken tokenizer.model) are loaded here,
    since only they fail for want of a library; that costs a transformers import, a few seconds."""
    folder = _folder(value)
    if folder is None or (folder / "llava_moslora.json").is_file() or not needs_conversion(folder):
        return None
    missing = missing_libraries(folder)
    if missing:
        kind = tokenizer_format(folder)
        return (f"its tokenizer.model ({kind}, no tokenizer.json) needs {' and '.join(missing)} to load: "
                f"pip install {' '.join(missing)}")
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as error:  # whatever transformers raises: said in one line, with what would help
        return load_failure(folder, error)
    return None


def _feature_problem(tower: str, feature: Optional[str]) -> Optional[str]:
    """Why --mm_vision_select_feature cannot be read from this tower (towers.select_strategy)."""
    import json

    folder = _folder(tower)
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type") if folder else None
    except (OSError, ValueError):
        return None  # the model loader says what is wrong with it
    if model_type not in (*CLS_FIRST, *NO_CLS):
        return None
    try:
        select_strategy(model_type, feature)
    except ValueError as error:
        return f"--mm_vision_select_feature {feature}: {error}"
    return None


def _tracker_problem(value: str) -> Optional[str]:
    """What keeps transformers from reporting to `value` (comma-separated integrations), if anything."""
    import importlib.util

    names = [name.strip() for name in value.split(",") if name.strip()]
    if names in (["none"], ["all"]):
        return None
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        return f"unknown tracker {', '.join(unknown)}; accepted: none, all, {', '.join(TRACKERS)}"
    missing = [name for name in names if importlib.util.find_spec(TRACKERS[name]) is None
               and not (name == "tensorboard" and importlib.util.find_spec("tensorboardX"))]
    return f"not installed: pip install {' '.join(missing)}" if missing else None


def _output_problem(output: Path) -> Optional[str]:
    if not output.is_dir():
        return None
    held = sorted(p.name for p in output.glob("checkpoint-*") if p.is_dir()) + \
        [m for m in RUN_MARKERS if (output / m).is_file()]
    if not held:
        return None
    return (f"holds another run ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); continue it with "
            "--resume_from_checkpoint auto, or give another output folder (or delete this one)")


def flag_value(argv: Sequence[str], name: str) -> Optional[str]:
    """The value argv gives option `name` as transformers' HfArgumentParser reads it: "--x v", "--x=v",
    the dashed spelling "--x-y" of "--x_y", "true" for a bare boolean "--x"; the last wins. (The
    launch checks read argv with this instead of HfArgumentParser itself, which would cost every
    launch a transformers import; tests/train/test_launch_mistakes.py checks the two agree.)"""
    value, wanted = None, name.replace("-", "_")
    for i, arg in enumerate(argv):
        key, equals, given = arg.partition("=")
        if key.startswith("--") and key.replace("-", "_") == wanted:
            value = given if equals else (argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--")
                                          else "true")
    return value


TRUE_WORDS = ("yes", "true", "t", "y", "1")  # transformers.hf_argparser.string_to_bool's


def flag_is_on(argv: Sequence[str], *names: str) -> bool:
    return any((flag_value(argv, name) or "false").lower() in TRUE_WORDS for name in names)


def check_launch(argv: Sequence[str]) -> None:
    """Raise LaunchError (exit 2) saying every mistake, printed once (rank 0 under a launcher)."""
    found = problems(argv)
    if found:
        if os.environ.get("RANK", "0") == "0":
            print("\n".join(f"llava-moslora: {line}" for line in found), file=sys.stderr, flush=True)
        raise LaunchError(found[0])


def main(argv: Optional[Sequence[str]] = None) -> int:
    found = problems(list(sys.argv[1:] if argv is None else argv))
    for line in found:
        print(f"llava-moslora: {line}", file=sys.stderr, flush=True)
    return 2 if found else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
