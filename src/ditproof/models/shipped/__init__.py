"""The shipped small Wan2.2-architecture model, ``wan-shapes-small``, trained on synthetic shape videos.

``wan-shapes-small/`` is a diffusers-format ``WanPipeline`` folder (float16 weights, loaded in
float32); ``MODEL_CARD.md`` beside it says how it was trained and how well it follows prompts.
The card and images live outside the model folder so that editing them does not change the
model revision (the hash of the folder's files).
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_NAME = "wan-shapes-small"
SHIPPED_ROOT = Path(__file__).resolve().parent
SHIPPED_DIR = SHIPPED_ROOT / SHIPPED_NAME

DEMO_REQUEST = {"width": 128, "height": 128, "num_frames": 17, "num_inference_steps": 20}
"""The size the model was trained at, and the demo's request (flow shift: the request default)."""
