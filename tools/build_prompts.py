"""Rebuilds the shipped prompt files (free text and mixed) from freetext-lists.toml and the grammar.

    PYTHONPATH=src python tools/build_prompts.py

A test checks that the committed files are what this writes (docs/experiment.md, "Prompts").
"""

from __future__ import annotations

from ditproof.experiment.prompts import write_shipped

if __name__ == "__main__":
    write_shipped()
