"""``ditproof experiment install-thresholds``: calibrated entries into another thresholds file.

Small synthetic thresholds files on disk, built with the policy's own models; the command runs
through the library and once through the real entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ditproof.cli.main import main
from ditproof.errors import InvalidInputError
from ditproof.experiment.install import (
    MEASURED_NOTE,
    MIRRORED_NOTE,
    any_cpu_isa,
    install_thresholds,
    parse_keys,
    select_entries,
)
from ditproof.validation.policy import ThresholdEntry, ThresholdsFile

REV = "ab" * 32
OTHER_REV = "cd" * 32
TAIL = "diffusers-0.42.1/torch-2.13.0+cpu/sdpa/cfg-sequential+tp1/float32/rev-abababababababab/UniPC-1"
CPU2 = f"cpu-x86_64/avx512-2threads/{TAIL}"
CPU1 = f"cpu-x86_64/avx512-1threads/{TAIL}"
GPU = "cuda-sm90/*/diffusers-0.42.1/torch-2.11.0*/sdpa/*/bfloat16/rev-abababababababab/UniPC-1"
PROV = {"calibration": "unit-test", "fpr_target": 0.01, "date": "2026-12-06", "notes": "pool p"}
CHECKPOINT_AT = {"phase": "low-noise", "start": 0.5, "end": 1.0}


def entry(executor: str, validator: str, key: str = "latent_rel_l2:value", value: float = 1e-3, **kw: Any) -> dict:
    metric, statistic = key.split(":")
    direction = "higher-is-better" if metric in ("psnr", "ssim") else "lower-is-better"
    return {
        "model": REV,
        "runtime_class": executor,
        "validator_class": validator,
        "metric": metric,
        "statistic": statistic,
        "direction": direction,
        "value": value,
        "provenance": PROV,
        **kw,
    }


def thresholds(*entries: dict, version: int = 1, **kw: Any) -> ThresholdsFile:
    document = {"version": version, "provisional": False, "description": "test", "entries": list(entries), **kw}
    return ThresholdsFile.model_validate(document)


def calibrated() -> ThresholdsFile:
    """An analysis's file: two CPU pools against the 2-thread reference, a GPU pool, extra keys."""
    return thresholds(
        entry(CPU1, CPU2),
        entry(CPU1, CPU2, "psnr:mean", 40.0),
        entry(CPU1, CPU2, "psnr:worst", 35.0),  # not a default key
        entry(CPU1, CPU2, "latent_rel_l2_checkpoint:value", 2e-3, position=CHECKPOINT_AT),
        entry(CPU2.replace("/sdpa/", "/sdpa-math/"), CPU2, "latent_rel_l2_segment:value", 3e-3),
        entry(CPU2.replace("/sdpa/", "/sdpa-math/"), CPU2, "ssim:mean", 0.99),  # not a default key
        entry(GPU, GPU, value=5e-2),
    )


def write(path: Path, file: ThresholdsFile) -> Path:
    file.save(path)
    return path


def keys_of(entries: list[ThresholdEntry]) -> set[tuple[str, str, str]]:
    return {(e.runtime_class, e.validator_class, f"{e.metric}:{e.statistic}") for e in entries}


def test_selects_the_asked_keys_of_matching_classes() -> None:
    chosen = select_entries(calibrated(), ["cpu-*"])
    assert keys_of(chosen) == {
        (CPU1, CPU2, "latent_rel_l2:value"),
        (CPU1, CPU2, "psnr:mean"),
        (CPU1, CPU2, "latent_rel_l2_checkpoint:value"),
        (CPU2.replace("/sdpa/", "/sdpa-math/"), CPU2, "latent_rel_l2_segment:value"),
    }
    assert all(e.provenance.notes == "pool p" for e in chosen)  # no mirror, no ISA change: notes as measured
    assert next(e for e in chosen if e.metric == "latent_rel_l2_checkpoint").position is not None
    # Other keys, and a pattern that names one class (the executor or the validator).
    assert keys_of(select_entries(calibrated(), ["cpu-*"], parse_keys("ssim:mean"))) == {
        (CPU2.replace("/sdpa/", "/sdpa-math/"), CPU2, "ssim:mean")
    }
    assert keys_of(select_entries(calibrated(), ["cuda-*"])) == {(GPU, GPU, "latent_rel_l2:value")}
    assert len(select_entries(calibrated(), ["*-1threads/*"])) == 3  # CPU1 as the executor


def test_mirror_writes_each_pair_both_ways_once() -> None:
    chosen = select_entries(calibrated(), ["*-1threads/*"], parse_keys("latent_rel_l2:value"), mirror=True)
    assert [(e.runtime_class, e.validator_class) for e in chosen] == [(CPU1, CPU2), (CPU2, CPU1)]
    assert chosen[0].provenance.notes == f"pool p; {MEASURED_NOTE}"
    assert chosen[1].provenance.notes == f"pool p; {MIRRORED_NOTE}"
    assert chosen[0].value == chosen[1].value
    # The same pair both ways is one entry; a direction the file measured is never a mirror's.
    both = thresholds(entry(CPU1, CPU2, value=1e-3), entry(CPU2, CPU1, value=2e-3), entry(GPU, GPU))
    mirrored = select_entries(both, ["*"], mirror=True)
    assert [(e.runtime_class, e.validator_class, e.value) for e in mirrored] == [
        (CPU1, CPU2, 1e-3),
        (CPU2, CPU1, 2e-3),
        (GPU, GPU, 1e-3),
    ]
    assert all(e.provenance.notes.endswith(MEASURED_NOTE) for e in mirrored)


def test_any_cpu_isa_writes_the_instruction_set_as_a_pattern() -> None:
    assert any_cpu_isa(CPU2) == f"cpu-x86_64/*-2threads/{TAIL}"
    assert any_cpu_isa("cpu-aarch64/neon-8threads/x") == "cpu-aarch64/*-8threads/x"
    assert (
        any_cpu_isa("cpu-x86_64/avx512+probe82369a65-2threads/x") == "cpu-x86_64/*-2threads/x"
    )  # with the kernel probe
    assert any_cpu_isa(GPU) == GPU
    # A GPU validator's pool with a CPU executor: the CPU side generalised, the mirror for a CPU validator.
    pool = thresholds(entry(CPU2, GPU), entry(GPU, GPU))
    chosen = select_entries(pool, ["cuda-*"], mirror=True, any_isa=True)
    cpu = f"cpu-x86_64/*-2threads/{TAIL}"
    assert [(e.runtime_class, e.validator_class) for e in chosen] == [(cpu, GPU), (GPU, cpu), (GPU, GPU)]
    assert chosen[1].provenance.notes == f"pool p; {MIRRORED_NOTE}; calibrated on avx512, any x86_64 ISA accepted"
    assert chosen[2].provenance.notes == f"pool p; {MEASURED_NOTE}"  # nothing generalised: no ISA note
    # Two ISAs that would become one entry are refused rather than one of them dropped.
    two_isas = thresholds(entry(CPU1, CPU2), entry(CPU1.replace("avx512", "avx2"), CPU2.replace("avx512", "avx2")))
    with pytest.raises(InvalidInputError, match="become one"):
        select_entries(two_isas, ["cpu-*"], any_isa=True)


def test_replaces_only_the_matching_entries_of_the_same_model(tmp_path: Path) -> None:
    source = write(tmp_path / "calibrated.json", calibrated())
    old_cpu = f"cpu-x86_64/*-2threads/{TAIL}"
    target = write(
        tmp_path / "shipped.json",
        thresholds(
            entry(old_cpu, old_cpu, value=9.0),  # same model, a CPU class: replaced
            entry(old_cpu, f"cpu-x86_64/*-4threads/{TAIL}", "psnr:mean", 30.0),  # ditto, a pair no longer measured
            entry(GPU, GPU, value=5e-2),  # another class: kept
            entry(old_cpu, old_cpu, model=OTHER_REV),  # another model: kept
            version=6,
        ),
    )
    result = install_thresholds(source, target, ["cpu-*"], mirror=True, any_isa=True)
    assert (result.kept, result.removed, result.installed) == (2, 2, 8)
    written = ThresholdsFile.load(target)
    assert written == result.file and written.version == 7
    assert written.description == "test" and not written.provisional
    assert {(e.model, e.runtime_class) for e in written.entries[:2]} == {(REV, GPU), (OTHER_REV, old_cpu)}
    new = written.entries[2:]
    assert len(new) == 8 and all(e.model == REV and "avx512" not in e.runtime_class + e.validator_class for e in new)
    assert all(e.value != 9.0 for e in written.entries if e.model == REV)
    # Again: the same entries, one version up.
    again = install_thresholds(source, target, ["cpu-*"], mirror=True, any_isa=True)
    assert (again.kept, again.removed, again.installed) == (2, 8, 8) and again.file.entries == written.entries
    assert ThresholdsFile.load(target).version == 8


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(["experiment", "install-thresholds", *args])
    return int(info.value.code or 0)


def test_cli_installs_and_prints_what_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "calibrated.json", calibrated())
    target = write(tmp_path / "shipped.json", thresholds(entry(GPU, GPU), version=3))
    code = cli(str(source), "--into", str(target), "--replace", "cpu-*", "--mirror", "--any-cpu-isa")
    assert code == 0
    assert f"{target}: 1 entries kept, 0 removed, 8 installed from {source} (version 4)" in capsys.readouterr().out
    # The file as committed: sorted keys, one field a line.
    assert target.read_text().startswith('{\n "description": "test",\n "entries": [\n')
    assert len(ThresholdsFile.load(target).entries) == 9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json"], "cannot be read"),
        (["garbage.json"], "not a valid ditproof.thresholds/3"),
        (["calibrated.json", "--keys", "psnr:median"], "--keys: 'psnr:median'"),
        (["calibrated.json", "--keys", "psnr:p05"], "nothing to install: no entry of keys psnr:p05"),
        (["calibrated.json", "--replace", "rocm-*"], "--replace: got 'rocm-*', which matches no"),
        (["calibrated.json", "--into-folder"], "a folder"),
        (["old-schema.json"], "validator_class: not in a ditproof.thresholds/2 file"),
    ],
)
def test_refusals_exit_2_and_leave_the_target_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    write(tmp_path / "calibrated.json", calibrated())
    (tmp_path / "garbage.json").write_text('{"entries": 3}')
    shipped = thresholds(entry(CPU2, CPU2, value=9.0))
    if args[0] == "old-schema.json":  # a /2 target cannot hold validator classes: the result fails its checks
        shipped = thresholds(entry(GPU, "*"), schema_version="ditproof.thresholds/2")
        args = ["calibrated.json"]
    target = write(tmp_path / "shipped.json", shipped)
    into = target
    if args[-1] == "--into-folder":
        args, into = args[:-1], tmp_path
    before = target.read_bytes()
    patterns = [] if "--replace" in args else ["--replace", "cpu-*"]
    source, *rest = args
    code = cli(str(tmp_path / source), "--into", str(into), *patterns, *rest)
    assert code == 2
    assert message in capsys.readouterr().err
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibrated.json", "garbage.json", "shipped.json"]
