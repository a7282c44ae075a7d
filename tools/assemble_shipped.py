"""Turns a stage-2 training bundle into the shipped diffusers folder and model card.

    PYTHONPATH=src python3 tools/assemble_shipped.py --bundle DIR [--root src/ditproof/models/shipped]

writes ``ROOT/wan-shapes-small/`` (the ``WanPipeline`` folder, float16 weights), and
``ROOT/training.json`` and ``ROOT/loss_curves.png`` (copied from the bundle), then the model card
(:func:`ditproof.training.assemble.assemble`; docs/shipped-model.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ditproof.models.shipped import SHIPPED_ROOT
from ditproof.training.assemble import assemble


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="the stage-2 output folder")
    parser.add_argument("--root", type=Path, default=SHIPPED_ROOT, help="where the model folder and card go")
    args = parser.parse_args(argv)
    folder = assemble(args.bundle, args.root)
    print(f"wrote {folder} and the model card in {args.root}")


if __name__ == "__main__":
    main()
