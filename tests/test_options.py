"""The runtime options split: load options (the loaded model's), run options (a run's), and the
record's complete view joining them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ditproof.protocol.options import (
    CacheOptions,
    CaptureOptions,
    CfgOffTail,
    LoadOptions,
    RunOptions,
    RuntimeOptions,
    VideoEncoding,
)

RECORD_FIELDS = (
    "device",
    "dtype",
    "vae_dtype",
    "text_encoder_dtype",
    "attention_backend",
    "cfg_mode",
    "experts",
    "offload_text_encoder",
    "weights",
    "cache",
    "shortcut",
    "tp_degree",
    "cp_degree",
    "capture",
    "encoding",
    "engine",
    "fuse_projections",
    "fuse_elementwise",
    "compile",
    "cpu_threads",
    "ffn_chunks",
    "cfg_degree",
)
"""The record's ``options`` fields, in their order (the record format: unchanged by the split)."""


def test_the_two_parts_split_the_records_fields_with_the_same_types_and_defaults():
    assert tuple(RuntimeOptions.model_fields) == RECORD_FIELDS
    load, run = set(LoadOptions.model_fields), set(RunOptions.model_fields)
    assert not load & run and load | run == set(RECORD_FIELDS)
    for part in (LoadOptions, RunOptions):
        for name, info in part.model_fields.items():
            whole = RuntimeOptions.model_fields[name]
            assert (info.annotation, info.default, info.metadata) == (whole.annotation, whole.default, whole.metadata)


def test_load_and_run_join_back_to_the_same_options_and_bytes():
    options = RuntimeOptions(
        device="cuda:1",
        dtype="bfloat16",
        attention_backend="sdpa-math",
        weights="fp8-e4m3",
        cache=CacheOptions(threshold=0.2),
        shortcut=CfgOffTail(kind="cfg-off-tail"),
        capture=CaptureOptions(checkpoint_steps=(3,)),
        encoding=VideoEncoding(crf=20),
        fuse_projections=True,
        cpu_threads=2,
        ffn_chunks=4,
    )
    assert options.load == LoadOptions(
        device="cuda:1", dtype="bfloat16", weights="fp8-e4m3", fuse_projections=True, ffn_chunks=4
    )
    assert options.run.cache == CacheOptions(threshold=0.2) and options.run.cpu_threads == 2
    joined = RuntimeOptions.of(options.load, options.run)
    assert joined == options and joined.model_dump_json() == options.model_dump_json()
    assert RuntimeOptions.of(LoadOptions(), RunOptions()) == RuntimeOptions()


def test_each_part_refuses_the_others_fields_and_checks_the_device():
    with pytest.raises(ValidationError, match="attention_backend"):
        LoadOptions(attention_backend="flex")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="dtype"):
        RunOptions(dtype="bfloat16")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="allowed: cpu, cuda or cuda:N"):
        LoadOptions(device="cpu:0")
