"""Turns a stage-2 bundle into the shipped diffusers folder, with its training record beside it.

Usage::

    PYTHONPATH=src python3 -m ditproof.training.assemble --bundle DIR [--root src/ditproof/models/shipped]

writes ``ROOT/wan-shapes-small/`` (the ``WanPipeline`` folder, float16 weights), and
``ROOT/training.json`` and ``ROOT/loss_curves.png`` (copied from the bundle), then the model card
(:mod:`ditproof.training.card`, with evaluation results when ``ROOT/eval.json`` exists).
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="the stage-2 output folder")
    parser.add_argument("--root", type=Path, default=SHIPPED_ROOT, help="where the model folder and card go")
    args = parser.parse_args(argv)
    folder = assemble(args.bundle, args.root)
    print(f"wrote {folder} and the model card in {args.root}")


if __name__ == "__main__":
    main()
