"""``ditproof poc generate|validate|calibrate`` in process (typer's runner on the real app)."""

import json

import pytest
from typer.testing import CliRunner

from ditproof.cli.main import app

BLOCK = "ab" * 32
SMALL = ["--latent-frames", "1", "--latent-height", "16", "--latent-width", "16"]
runner = CliRunner()


def _generate(out, count: str = "40", *extra: str):
    return runner.invoke(
        app,
        [
            "poc",
            "generate",
            "--block-hash",
            BLOCK,
            "--public-key",
            "node-1",
            "--out",
            str(out),
            "--count",
            count,
            *SMALL,
            *list(extra),
        ],
    )


@pytest.fixture(scope="module")
def round_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("poc") / "round"
    result = _generate(out, "240")
    assert result.exit_code == 0, result.output
    return out


def test_generate_writes_store_and_commitment(round_dir):
    store = json.loads((round_dir / "artifacts.json").read_text())
    commitment = json.loads((round_dir / "commitment.json").read_text())
    assert store["commitment"] == commitment
    assert commitment["count"] == 240 and len(store["artifacts"]) == 240
    assert commitment["params"]["latent_height"] == 16 and commitment["params"]["k_dim"] == 12
    assert set(store["artifacts"][0]) == {"nonce", "vector_b64"}


@pytest.mark.parametrize("policy", ["ml-node", "wan-tiny-random-cpu-fp32"])
def test_validate_honest_round(round_dir, tmp_path, policy):
    verdict_path = tmp_path / "verdict.json"
    result = runner.invoke(
        app, ["poc", "validate", "--artifacts", str(round_dir), "--policy", policy, "--out", str(verdict_path)]
    )
    assert result.exit_code == 0, result.output
    verdict = json.loads(verdict_path.read_text())
    assert verdict["decision"] == "valid" and verdict["checked"] == 200


def test_validate_tampered_store_exits_1(round_dir, tmp_path):
    store = json.loads((round_dir / "artifacts.json").read_text())
    store["artifacts"][3]["vector_b64"] = store["artifacts"][4]["vector_b64"]
    path = tmp_path / "artifacts.json"
    path.write_text(json.dumps(store))
    result = runner.invoke(app, ["poc", "validate", "--artifacts", str(path)])
    assert result.exit_code == 1 and "invalid" in result.output


def test_bad_input_exits_2_with_the_field_named(round_dir, tmp_path):
    result = runner.invoke(app, ["poc", "validate", "--artifacts", str(round_dir), "--policy", "nope"])
    assert result.exit_code == 2 and "policy" in result.output
    result = runner.invoke(
        app,
        ["poc", "validate", "--artifacts", str(round_dir), "--fraud-threshold", "0.01", "--p-value-threshold", "0.05"],
    )
    assert result.exit_code == 2 and "--p-value-threshold" in result.output
    result = runner.invoke(app, ["poc", "validate", "--artifacts", str(round_dir), "--p-mismatch", "1.5"])
    assert result.exit_code == 2 and "p_mismatch" in result.output
    result = runner.invoke(app, ["poc", "validate", "--artifacts", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "artifacts" in result.output
    result = runner.invoke(
        app, ["poc", "generate", "--block-hash", "xyz", "--public-key", "k", "--out", str(tmp_path), "--count", "2"]
    )
    assert result.exit_code == 2 and "block_hash" in result.output
    result = runner.invoke(
        app,
        ["poc", "generate", "--block-hash", BLOCK, "--public-key", "k", "--out", str(tmp_path), "--latent-width", "15"],
    )
    assert result.exit_code == 2 and "latent_width" in result.output


def test_calibrate_proposes_a_policy(tmp_path):
    out = tmp_path / "calibration.json"
    result = runner.invoke(app, ["poc", "calibrate", "--nonces", "32", "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    calibration = json.loads(out.read_text())
    kinds = {c["name"]: c["kind"] for c in calibration["comparisons"]}
    assert kinds["cpu float32 batch 1"] == "honest" and kinds["cpu bfloat16 batch 16"] == "cross-dtype"
    assert {c["name"] for c in calibration["cheats"]} == {
        "one expert (high-noise only)",
        "1% of weights perturbed",
        "FP8 weights (e4m3 round trip)",
        "last 1 layer(s) skipped",
    }
    honest = [c for c in calibration["comparisons"] if c["kind"] == "honest"]
    assert max(c["max"] for c in honest) < calibration["proposed"]["dist_threshold"]
    assert all(c["mismatch_rate"] > 0.3 for c in calibration["cheats"])
    # Every nonce's distance is kept, per runtime, so the policy can be derived again.
    assert {d["name"] for d in calibration["distances"]} == set(kinds)
    assert all(len(d["values"]) == 32 for d in calibration["distances"])
    assert calibration["derivation"]["nonces"] == 32
    assert "policy: dist_threshold" in result.output and "smallest f" in result.output
    # 32 nonces cannot bound the honest rate well: the output says which targets are missed.
    assert "warning:" in result.output

    # Derived again from the kept distances for other targets: no model run, a policy file with
    # Gonka's parameter names.
    policy_file = tmp_path / "policy.json"
    again = runner.invoke(
        app,
        ["poc", "calibrate", "--from", str(out), "--cheat-fraction", "0.5", "--detection", "0.9",
         "--policy-out", str(policy_file)],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    written = json.loads(policy_file.read_text())
    assert {"dist_threshold", "p_mismatch", "p_value_threshold", "validation_sample_size"} <= set(written)
    from ditproof.protocol.poc import PocPolicy

    assert PocPolicy.model_validate(written).fraud_threshold == 0.001


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--detection", "1.5"], "--detection"),
        (["--cheat-fraction", "0"], "--cheat-fraction"),
        (["--from", "/nonexistent/calibration.json"], "--from: cannot read"),
    ],
)
def test_calibrate_refuses_bad_targets_and_files(args, message):
    result = runner.invoke(app, ["poc", "calibrate", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_count_has_an_upper_bound_and_a_finished_round_is_not_overwritten(round_dir):
    from ditproof.poc.node import MAX_ROUND_NONCES

    result = _generate(round_dir.parent / "huge", str(MAX_ROUND_NONCES + 1))
    assert result.exit_code == 2 and f"count from 1 to {MAX_ROUND_NONCES}" in result.output
    before = (round_dir / "artifacts.json").read_bytes()
    refused = _generate(round_dir, "8")
    assert refused.exit_code == 2 and "already holds a finished round" in refused.output
    assert (round_dir / "artifacts.json").read_bytes() == before


def test_an_interrupted_round_keeps_its_batches_and_resumes(tmp_path, tiny_model):
    # The batches finished before an interruption are on disk; the same round again computes only
    # the rest and commits to the same root as an uninterrupted run.
    from ditproof.poc.node import PARTIAL_FILE, generate_round_in
    from ditproof.protocol.poc import PocParams

    params = PocParams(latent_frames=1, latent_height=16, latent_width=16, text_len=32)
    whole = generate_round_in(tmp_path / "whole", tiny_model, params, BLOCK, "node-1", range(40), batch_size=8)

    def interrupt(done: int, total: int) -> None:
        if done >= 24:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_round_in(tmp_path / "cut", tiny_model, params, BLOCK, "node-1", range(40), 8, interrupt)
    lines = (tmp_path / "cut" / PARTIAL_FILE).read_text().splitlines()
    assert len(lines) == 1 + 24 and not (tmp_path / "cut" / "artifacts.json").exists()
    with (tmp_path / "cut" / PARTIAL_FILE).open("a") as handle:
        handle.write('{"nonce": 24, "vector_b')  # a line an interruption cut short
    seen: list[int] = []
    resumed = generate_round_in(
        tmp_path / "cut", tiny_model, params, BLOCK, "node-1", range(40), 8, lambda done, total: seen.append(done)
    )
    assert seen[0] == 24 and resumed.commitment.root == whole.commitment.root
    assert not (tmp_path / "cut" / PARTIAL_FILE).exists()
    other = generate_round_in(tmp_path / "cut2", tiny_model, params, BLOCK, "node-1", range(8), 8)
    assert other.commitment.count == 8
    (tmp_path / "cut2" / PARTIAL_FILE).write_text('{"block_hash": "other"}\n')
    (tmp_path / "cut2" / "artifacts.json").unlink()
    result = _generate(tmp_path / "cut2", "8")
    assert result.exit_code == 2 and "unfinished round of another" in result.output
