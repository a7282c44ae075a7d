# Sourced by scripts/demo and scripts/test: creates .venv (once) and installs ditproof into it.
# Needs only python3 (3.11 or newer). PYTHON overrides the interpreter.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ditproof needs Python 3.11 or newer")'
venv="${DITPROOF_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
stamp="$venv/.ditproof-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e ".[dev,ray]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE=1
