"""ditproof inside the vLLM-Omni environment: ``engine="vllm-omni"`` in-process (``vllm_omni.Omni``).

The script below runs in ``.venv-omni``'s interpreter (ditproof is installed there with
--no-deps beside vLLM-Omni's diffusers 0.40.0): executor and validator both go through the
in-process engine, and the CLI's ``--engine vllm-omni`` writes a record the validator accepts.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from test_vllm_omni_support import OMNI_PYTHON, OMNI_VENV, ROOT, needs_omni, omni_env, save_tiny_folder

pytestmark = [needs_omni, pytest.mark.slow]

SCRIPT = """
import json, sys
from ditproof.generation.engines import configure_vllm_omni
from ditproof.generation.execute import execute
from ditproof.models.registry import load_model
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.request import GenerationRequest
from ditproof.validation.policy import ThresholdPolicy
from ditproof.validation.validate import validate

folder, out, artifacts = sys.argv[1:4]
configure_vllm_omni(model_dir=folder, artifacts=artifacts)
options = RuntimeOptions(engine="vllm-omni")
model = load_model(folder, options.load)
request = GenerationRequest(prompt="a blue square", width=64, height=48, num_frames=5, num_inference_steps=3)
record = execute(request, model, options, out, request_id="inproc-1", entropy="77" * 32)
policy = ThresholdPolicy(explicit={"latent_rel_l2": 1e-9, "psnr": 40.0})
verdict = validate(record, out + "/video.mp4", model, policy=policy)
exact = [c.detail for c in verdict.checks if c.name == "exact_match"][0]
print("RESULT " + json.dumps({"class": record.runtime_class, "decision": verdict.decision,
                              "exact": exact, "video": record.video.sha256}))
"""


def test_in_process_engine_and_validation(tmp_path):
    folder = save_tiny_folder(tmp_path / "tiny-wan")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    done = subprocess.run(
        [str(OMNI_PYTHON), "-c", SCRIPT, str(folder), str(tmp_path / "out"), str(artifacts)],
        env=omni_env(artifacts),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # vLLM-Omni prefixes this process's stdout lines with its worker's name.
    lines = [line.split("RESULT ", 1)[1] for line in done.stdout.splitlines() if "RESULT " in line]
    assert done.returncode == 0 and lines, f"{OMNI_VENV} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert result["decision"] == "valid" and "final latent True" in result["exact"]
    assert "/vllm-omni-0.30.0+diffusers-0.40.0/" in result["class"]
