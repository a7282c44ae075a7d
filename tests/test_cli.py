"""The command line, run as a real subprocess."""

import json
import subprocess
import sys

import pytest

ENTROPY = "ab" * 32


def ditproof(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ditproof.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


SMALL = ["--width", "64", "--height", "48", "--num-frames", "5", "--steps", "4", "--quiet"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = ditproof(
        "generate",
        "--prompt",
        "a red circle moves left",
        "--out",
        str(out),
        *SMALL,
        "--request-id",
        "cli-1",
        "--entropy",
        ENTROPY,
    )
    assert result.returncode == 0, result.stderr
    return out, result


def test_generate_writes_video_record_and_latents(generated):
    out, result = generated
    record = json.loads((out / "record.json").read_text())
    assert (out / "video.mp4").stat().st_size == record["video"]["size_bytes"]
    # One file per step the default checkpoint schedule commits to, each named in the record.
    files = sorted(p.name for p in (out / "latents").iterdir())
    assert files == sorted(ref["file"].removeprefix("latents/") for ref in record["checkpoints"])
    assert {"initial.safetensors", "pre_switch.safetensors", "final.safetensors"} <= set(files)
    assert record["options"]["capture"]["schedule"] == {"rule": "per-phase-v1", "segments": 8}
    assert record["video"]["sha256"] in result.stdout
    assert record["request_id"] == "cli-1"


def test_generate_twice_is_byte_identical(generated, tmp_path):
    out, _ = generated
    again = ditproof(
        "generate",
        "--prompt",
        "a red circle moves left",
        "--out",
        str(tmp_path),
        *SMALL,
        "--request-id",
        "cli-1",
        "--entropy",
        ENTROPY,
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "video.mp4").read_bytes() == (out / "video.mp4").read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", "830"], "--width: got 830; allowed: a multiple of 16"),
        (["--num-frames", "80"], "--num-frames: got 80; allowed: 4k+1"),
        (["--steps", "0"], "--steps: got 0"),
        (["--guidance-scale", "nan"], "--guidance-scale: got nan"),
        (["--entropy", "xyz", "--request-id", "a"], "entropy: got 'xyz'"),
        (["--model", "wan2.2-t2v-a14b", "--model-path", "/nonexistent"], "model folder /nonexistent does not exist"),
        (["--dtype", "int8"], "dtype: got 'int8'"),
        (["--prompt", ""], "prompt: got ''"),
    ],
)
def test_invalid_input_exits_2_with_a_message(tmp_path, args, message):
    base = ["generate", "--prompt", "a cat", "--out", str(tmp_path / "x"), *SMALL]
    result = ditproof(*base, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x" / "record.json").exists()


def test_unknown_flag_exits_2():
    result = ditproof("generate", "--no-such-flag")
    assert result.returncode == 2 and "no-such-flag" in result.stderr


def test_info_lists_presets_and_runtime():
    result = ditproof("info", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert set(data["presets"]) == {"wan2.2-t2v-a14b", "wan-a14b-shape", "wan-shapes-small", "wan-tiny-random"}
    assert data["runtime"]["torch"]


def test_validate_command_accepts_honest_and_rejects_tampered(generated, tmp_path):
    out, _ = generated
    ok = ditproof("validate", "--record", str(out / "record.json"), "--verdict", str(tmp_path / "v.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads((tmp_path / "v.json").read_text())["decision"] == "valid"
    bad_video = tmp_path / "bad.mp4"
    data = bytearray((out / "video.mp4").read_bytes())
    data[-5] ^= 1
    bad_video.write_bytes(bytes(data))
    bad = ditproof("validate", "--record", str(out / "record.json"), "--video", str(bad_video))
    assert bad.returncode == 1 and "invalid" in bad.stdout


def test_validate_refuses_a_broken_record(tmp_path):
    broken = tmp_path / "record.json"
    broken.write_text('{"schema_version": "ditproof.record/1"}')
    result = ditproof("validate", "--record", str(broken))
    assert result.returncode == 2 and "not a valid ditproof.record/1 record" in result.stderr


def test_validate_against_the_clients_request_file(generated, tmp_path):
    out, _ = generated
    record = json.loads((out / "record.json").read_text())
    client = dict(record["request"])
    (tmp_path / "same.json").write_text(json.dumps(client))
    ok = ditproof("validate", "--record", str(out / "record.json"), "--request", str(tmp_path / "same.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "other.json").write_text(json.dumps({**client, "guidance_scale": 5.0}))
    other = ditproof("validate", "--record", str(out / "record.json"), "--request", str(tmp_path / "other.json"))
    assert other.returncode == 1 and "guidance_scale: record 4.0, client 5.0" in other.stdout
    (tmp_path / "bad.json").write_text("[1, 2]")
    bad = ditproof("validate", "--record", str(out / "record.json"), "--request", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "allowed: a JSON object" in bad.stderr and "Traceback" not in bad.stderr


def test_generate_takes_the_speed_options_and_pins_them_in_the_record(tmp_path):
    result = ditproof(
        "generate",
        "--prompt",
        "a red circle moves left",
        "--out",
        str(tmp_path / "fast"),
        *SMALL,
        "--encode-threads",
        "3",
        "--offload-text-encoder",
        "--fuse-projections",
        "--fuse-elementwise",
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "fast" / "record.json").read_text())
    assert record["runtime"]["encoding"]["threads"] == 3
    assert record["runtime"]["encoding"]["mbtree"] is False
    assert record["runtime"]["fuse_projections"] is True and record["runtime"]["fuse_elementwise"] is True
    assert "+fused+fused-elementwise[gelu-epilogue,norm-rope,norm-modulate]/" in record["runtime_class"]
    refused = ditproof("generate", "--prompt", "x", "--out", str(tmp_path / "bad"), *SMALL, "--encode-threads", "0")
    assert refused.returncode != 0 and "threads: got 0" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "bad").exists()


def test_a_prompt_that_is_not_utf8_is_invalid_input(tmp_path):
    # Bytes that are not UTF-8 reach Python as lone surrogates: refused before the model loads.
    run = subprocess.run(
        [
            sys.executable.encode(),
            b"-m",
            b"ditproof.cli.main",
            b"generate",
            b"--prompt",
            b"a red \xff\xfe circle",
            b"--out",
            str(tmp_path / "o").encode(),
            b"--quiet",
        ],
        capture_output=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-500:]
    assert b"not valid Unicode" in run.stdout + run.stderr and b"Traceback" not in run.stdout + run.stderr
    assert not (tmp_path / "o").exists()


def test_an_earlier_run_is_not_overwritten_without_force(generated):
    out, _ = generated
    record = (out / "record.json").read_bytes()
    refused = ditproof("generate", "--prompt", "another", "--out", str(out), *SMALL)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr and "--force" in refused.stderr
    assert (out / "record.json").read_bytes() == record


def test_messages_name_the_flag_once_and_count_problems_in_english(tmp_path):
    refused = ditproof("generate", "--prompt", "x", "--out", str(tmp_path / "o"), "--device", "bogus")
    assert refused.returncode == 2 and refused.stderr.count("got 'bogus'") == 1
    (tmp_path / "r.json").write_text("{}")
    broken = ditproof("validate", "--record", str(tmp_path / "r.json"))
    assert broken.returncode == 2 and "problems; first" in broken.stderr and "(1 problems" not in broken.stderr


def test_the_demo_generates_validates_and_says_where_the_video_is(tmp_path):
    run = ditproof("demo", "--out", str(tmp_path / "demo"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "verdict: valid" in run.stdout and "matched byte for byte" in run.stdout
    assert f"the video: {(tmp_path / 'demo' / 'video.mp4').resolve()}" in run.stdout.replace("\n", "")


def test_generate_uses_the_models_native_size_unless_told(tmp_path):
    # Without size flags a model runs at the size it was made for (the shipped one at 128x128x17,
    # 20 steps: not 832x480x81 at 40 steps, over an hour on a CPU); a flag given wins.
    from ditproof.cli.generate import native_sizes

    assert native_sizes(
        "wan-shapes-small", dict.fromkeys(("width", "height", "num_frames", "num_inference_steps"))
    ) == {
        "width": 128,
        "height": 128,
        "num_frames": 17,
        "num_inference_steps": 20,
    }
    assert native_sizes("wan-a14b-shape", {"width": None, "num_inference_steps": 3}) == {
        "width": 832,
        "num_inference_steps": 3,
    }
    run = ditproof("generate", "--prompt", "x", "--out", str(tmp_path / "o"), "--model", "wan-tiny-random", "--quiet")
    assert run.returncode == 0, run.stderr
    request = json.loads((tmp_path / "o" / "record.json").read_text())["request"]
    assert (request["width"], request["height"], request["num_frames"], request["num_inference_steps"]) == (
        64,
        48,
        5,
        4,
    )


def test_entropy_drawn_by_the_executor_is_recorded_and_can_be_refused(generated, tmp_path):
    # Without --entropy the CLI draws it: the record says so, and a validator that needs public
    # randomness refuses the record (exit 1). The module's run gave --entropy: "client".
    out, _ = generated
    assert json.loads((out / "record.json").read_text())["entropy_source"] == "client"
    drawn = ditproof("generate", "--prompt", "x", "--out", str(tmp_path / "d"), *SMALL)
    assert drawn.returncode == 0, drawn.stderr
    assert json.loads((tmp_path / "d" / "record.json").read_text())["entropy_source"] == "executor"
    refused = ditproof("validate", "--record", str(tmp_path / "d" / "record.json"), "--require-client-entropy")
    assert refused.returncode == 1 and "not the client's" in refused.stdout
