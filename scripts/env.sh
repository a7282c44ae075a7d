# Sourced by scripts/demo and scripts/test: creates .venv (once) and installs ditproof into it.
# Needs only python3 (3.11 or newer). PYTHON overrides the interpreter. The first install takes
# minutes (torch and the other requirements); each step says what it does, and pip lists the
# packages as it goes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ditproof needs Python 3.11 or newer")'
venv="${DITPROOF_VENV:-$root/.venv}"
step() { printf '==> [%4ss] %s\n' "$SECONDS" "$*"; }
if [ ! -x "$venv/bin/python" ]; then
  step "creating the virtual environment $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.ditproof-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "setting up $venv (the first time takes several minutes)"
  step "1/3 upgrading pip"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # torch first and on its own: it is the largest download and install, and pip is silent
  # while it unpacks, so its own step line says what the wait is.
  torch_requirement="$("$venv/bin/python" -c '
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(d for d in deps if d.replace(" ", "").startswith("torch=")))')"
  step "2/3 installing $torch_requirement (the largest package: a minute or more)"
  "$venv/bin/python" -m pip install "$torch_requirement"
  step "3/3 installing ditproof (editable) with its other requirements and the dev and ray extras"
  "$venv/bin/python" -m pip install -e ".[dev,ray]"
  touch "$stamp"
  step "set up: $venv"
fi
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE=1
