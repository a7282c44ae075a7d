"""The Stage 1 v2 run's two pre-registered decisions (docs/experiment.md), from its analyses.

Each folder holds an ``analysis.json`` (an experiment store after ``experiment analyze``, or a
report folder):

    PYTHONPATH=src python tools/stage1_decide.py --all STORE_ALL \
        --unseen STORE_UNSEEN --unseen-blocks STORE_UNSEEN_BLOCKS

``--all``: every prompt, one block (the ``--mode auto`` decision); ``--unseen`` and
``--unseen-blocks``: the prompts no choice of the blocks has seen (tenths 4 to 9), analysed without
and with ``--full-blocks`` (the block rule's decision). Prints both in Markdown; exit 0 either way,
2 on unreadable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ditproof.errors import DitproofError
from ditproof.experiment.decisions import auto_default, block_rule, markdown
from ditproof.experiment.findings import ANALYSIS_FILE, Analysis
from ditproof.experiment.store import Store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", required=True, help="analysis of every prompt (one block)")
    parser.add_argument("--unseen", required=True, help="analysis of the unseen prompts, one block")
    parser.add_argument("--unseen-blocks", required=True, help="the same prompts with --full-blocks")
    args = parser.parse_args(argv)
    analyses = []
    for flag, folder in (("--all", args.all), ("--unseen", args.unseen), ("--unseen-blocks", args.unseen_blocks)):
        if not (Path(folder) / ANALYSIS_FILE).is_file():
            allowed = "a store after `ditproof experiment analyze`, or a report folder"
            print(f"error: {flag}: {folder} holds no {ANALYSIS_FILE}; allowed: {allowed}", file=sys.stderr)
            return 2
        try:
            analyses.append(Store(folder).read_model(ANALYSIS_FILE, Analysis))
        except (DitproofError, ValueError) as exc:  # a damaged file, or not an analysis
            print(f"error: {flag}: {exc}", file=sys.stderr)
            return 2
    every, unseen, blocks = analyses
    try:
        decisions = [block_rule(unseen, blocks), auto_default(every)]
    except DitproofError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(markdown(decisions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
