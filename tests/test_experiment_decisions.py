"""The Stage 1 v2 run's pre-registered decisions, read off analyses of the committed CPU run's scores
(tools/stage1_decide.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ditproof.errors import InvalidInputError
from ditproof.experiment.analyze import analyze_folder
from ditproof.experiment.decisions import auto_default, block_rule
from ditproof.experiment.findings import ANALYSIS_FILE, Analysis, Method
from ditproof.experiment.store import Store

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "stage1" / "v2-cpu"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The committed v2-cpu scores analysed without and with blocks (few splits: a test, not a figure)."""
    found = {}
    for name, blocks in (("one", False), ("blocks", True)):
        folder = tmp_path_factory.mktemp(name)
        for path in COMMITTED.iterdir():
            if path.suffix in (".json", ".csv", ".gz"):
                shutil.copy(path, folder / path.name)
        analyze_folder(folder, method=Method(repeats=20, resamples=50, full_blocks=blocks))
        found[name] = folder
    return found


def test_each_decision_lists_its_conditions_and_holds_only_if_all_do(folders: dict[str, Path]) -> None:
    one, blocks = (Store(str(folders[n])).read_model(ANALYSIS_FILE, Analysis) for n in ("one", "blocks"))
    decision = block_rule(one, blocks)
    assert decision.conditions[0][0].startswith("FPR out of sample")
    assert [text.split(":")[0] for text, _ in decision.conditions[1:]] == blocks.malign_classes
    assert decision.adopted == all(ok for _, ok in decision.conditions)
    auto = auto_default(one)
    assert auto.conditions[0][0].startswith("checkpoints: FPR out of sample")
    assert auto.conditions[1][0].startswith("checkpoints' lowest TPR")
    assert auto.adopted == all(ok for _, ok in auto.conditions)
    with pytest.raises(InvalidInputError, match="without --full-blocks, then one with it"):
        block_rule(blocks, one)


def test_the_tool_prints_both_and_refuses_what_it_cannot_read(folders: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    tool = [sys.executable, str(ROOT / "tools" / "stage1_decide.py"), "--all", str(folders["one"])]

    def run(unseen: Path, blocks: Path) -> subprocess.CompletedProcess[str]:
        args = [*tool, "--unseen", str(unseen), "--unseen-blocks", str(blocks)]
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)

    done = run(folders["one"], folders["blocks"])
    assert done.returncode == 0, done.stderr
    assert "**the block rule as the full mode's default: " in done.stdout
    assert "**--mode auto as ditproof validate's default: " in done.stdout
    swapped = run(folders["blocks"], folders["one"])
    assert swapped.returncode == 2 and "without --full-blocks, then one with it" in swapped.stderr
    missing = run(tmp_path, folders["blocks"])
    assert missing.returncode == 2 and f"--unseen: {tmp_path} holds no analysis.json" in missing.stderr
    assert "Traceback" not in swapped.stderr + missing.stderr
