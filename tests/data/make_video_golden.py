"""Record the golden generation of ``tests/test_golden_video.py`` for this machine's runtime class.

    PYTHONPATH=src python tests/data/make_video_golden.py

Adds (or confirms) this runtime class's entry in ``tests/data/video_golden.json``. Run it only on a
commit whose output is known good: the test then holds every later change to the same bytes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ditproof.models.registry import load_model  # noqa: E402
from ditproof.protocol.options import LoadOptions  # noqa: E402
from test_golden_video import GOLDEN_FILE, golden_generation  # noqa: E402


def main() -> None:
    model = load_model("wan-shapes-small", LoadOptions())
    with tempfile.TemporaryDirectory() as scratch:
        observed = golden_generation(model, Path(scratch))
    goldens = json.loads(GOLDEN_FILE.read_text()) if GOLDEN_FILE.exists() else {"classes": {}}
    for key in ("seed", "noise_sha256", "model_revision"):
        if key in goldens and goldens[key] != observed[key]:
            raise SystemExit(f"{key} changed: {goldens[key]} → {observed[key]}; machine-independent, not re-recorded")
        goldens[key] = observed[key]
    goldens["classes"][observed["runtime_class"]] = observed["bytes"]
    GOLDEN_FILE.write_text(json.dumps(goldens, indent=1, sort_keys=True) + "\n")
    print(f"recorded {observed['runtime_class']}: {observed['bytes']['video_sha256']}")


if __name__ == "__main__":
    main()
