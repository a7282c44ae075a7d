"""Turns a stage-2 bundle into the shipped diffusers folder, with its training record beside it.

``tools/assemble_shipped.py --bundle DIR`` is its command. It writes ``ROOT/wan-shapes-small/`` (the ``WanPipeline`` folder, float16 weights), and
``ROOT/training.json`` and ``ROOT/loss_curves.png`` (copied from the bundle), then the model card
(:mod:`ditproof.training.card`, with evaluation results when ``ROOT/eval.json`` exists).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ditproof.models.shipped import SHIPPED_NAME, SHIPPED_ROOT
from ditproof.training.bundle import read_bundle
from ditproof.training.components import save_pipeline


def assemble(bundle_dir: Path, root: Path = SHIPPED_ROOT) -> Path:
    """Writes the diffusers folder and the training record from ``bundle_dir`` under ``root``.

    Returns:
        The diffusers folder.
    """
    pipe, _ = read_bundle(bundle_dir)
    folder = root / SHIPPED_NAME
    save_pipeline(pipe, folder)
    for name in ("training.json", "loss_curves.png"):
        shutil.copyfile(bundle_dir / name, root / name)
    from ditproof.training.card import write_card

    write_card(root)
    return folder
