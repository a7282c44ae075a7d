"""One request through the whole generation path gives the same bytes as when the golden was made.

The seed, the initial noise and the shipped model's revision are the same on every machine and are
always checked. The latents and the mp4 depend on the runtime class (CPU instruction set, library
versions, …): they are checked against the golden of this machine's class, which
``tests/data/make_video_golden.py`` records; a class without a golden is skipped, naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ditproof.generation.execute import execute
from ditproof.models.registry import LoadedModel, load_model
from ditproof.protocol.options import LoadOptions, RuntimeOptions
from ditproof.protocol.request import parse_request

GOLDEN_FILE = Path(__file__).resolve().parent / "data" / "video_golden.json"
REQUEST = {
    "prompt": "a green square bounces on a grey floor",
    "width": 128,
    "height": 128,
    "num_frames": 17,
    "num_inference_steps": 6,
}
ENTROPY = "60" * 32
OPTIONS = RuntimeOptions(cpu_threads=1)  # one thread: the bytes do not depend on the core count


def golden_generation(model: LoadedModel, out: Path) -> dict[str, Any]:
    record = execute(parse_request(REQUEST), model, OPTIONS, out, request_id="golden-1", entropy=ENTROPY)
    return {
        "seed": record.seed,
        "noise_sha256": record.noise.sha256,
        "model_revision": record.model.revision,
        "runtime_class": record.runtime_class,
        "bytes": {
            "video_sha256": record.video.sha256,
            "video_size_bytes": record.video.size_bytes,
            "checkpoints": {c.name: c.tensor_sha256 for c in record.checkpoints},
        },
    }


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = load_model("wan-shapes-small", LoadOptions())
    return golden_generation(model, tmp_path_factory.mktemp("golden"))


def test_seed_noise_and_revision_are_the_same_on_every_machine(observed):
    golden = json.loads(GOLDEN_FILE.read_text())
    assert observed["seed"] == golden["seed"]
    assert observed["noise_sha256"] == golden["noise_sha256"]
    assert observed["model_revision"] == golden["model_revision"]


def test_the_video_and_latents_are_the_golden_bytes_of_this_runtime_class(observed):
    golden = json.loads(GOLDEN_FILE.read_text())["classes"].get(observed["runtime_class"])
    if golden is None:
        pytest.skip(f"no golden for runtime class {observed['runtime_class']}; record: tests/data/make_video_golden.py")
    assert observed["bytes"]["checkpoints"] == golden["checkpoints"]
    assert observed["bytes"]["video_sha256"] == golden["video_sha256"]
    assert observed["bytes"]["video_size_bytes"] == golden["video_size_bytes"]
