"""In-process checks of the server's parts: configuration, request mapping, job and artifact stores."""

from __future__ import annotations

import pytest

from ditproof.errors import InvalidInputError
from ditproof.protocol.request import GenerationRequest
from ditproof.server.app import create_app
from ditproof.server.artifacts import ArtifactStore
from ditproof.server.config import ServerConfig, load_config
from ditproof.server.errors import ApiError
from ditproof.server.jobs import JobSpec, JobStore, QueueFullError, new_job_id
from ditproof.server.video_request import from_form, from_json, seconds_text, to_job_spec


def test_server_refuses_to_start_without_a_good_token(monkeypatch, tmp_path):
    monkeypatch.delenv("DITPROOF_API_TOKEN", raising=False)
    with pytest.raises(InvalidInputError, match="api_token: not set"):
        create_app(ServerConfig(data_dir=tmp_path))
    with pytest.raises(InvalidInputError, match="at least 16"):
        load_config(api_token="short")
    monkeypatch.setenv("DITPROOF_API_TOKEN", "x" * 20)
    assert load_config().token() == "x" * 20


def test_config_file_and_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("DITPROOF_API_TOKEN", raising=False)
    path = tmp_path / "node.toml"
    path.write_text('port = 9000\nmax_queue = 4\napi_token = "abcdefghijklmnopq"\n')
    config = load_config(path, port=9100, max_queue=None)
    assert (config.port, config.max_queue, config.api_token) == (9100, 4, "abcdefghijklmnopq")
    path.write_text("max_queue = 0\nmystery = 1\n")
    with pytest.raises(InvalidInputError) as info:
        load_config(path)
    assert "max_queue" in str(info.value) and "mystery" in str(info.value)
    assert "abcdefghijklmnopq" not in repr(config)


def spec(prompt: str = "x") -> JobSpec:
    request = GenerationRequest(prompt=prompt, width=64, height=48, num_frames=5, num_inference_steps=3, seed=1)
    return JobSpec(request=request, request_id=None, entropy=None, seed=1, seed_derivation="explicit", model="m")


def test_job_store_bounds_the_queue_and_keeps_order(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs = [store.submit(spec(f"p{i}"), max_queue=2) for i in range(2)]
    with pytest.raises(QueueFullError):
        store.submit(spec(), max_queue=2)
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == jobs[0].id and claimed.attempts == 1
    store.requeue(claimed.id, refund_attempt=False)
    again = store.claim_next()
    assert again is not None and again.id == jobs[0].id and again.attempts == 2  # keeps its place
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite3")  # survives a reopen
    assert reopened.get(jobs[1].id).spec == jobs[1].spec
    assert reopened.counts() == {"queued": 1, "in_progress": 1, "completed": 0, "failed": 0}


def test_artifact_store_only_takes_job_ids(tmp_path):
    store = ArtifactStore(tmp_path)
    for bad in ("../x", "video_../../etc", "video_" + "G" * 32, "/etc/passwd"):
        with pytest.raises(InvalidInputError):
            store.path(bad)
    job_id = new_job_id()
    staged = store.staging(job_id)
    (staged / "video.mp4").write_bytes(b"x")
    store.publish(job_id, staged)
    (tmp_path / ".tmp-leftover").mkdir()
    assert store.clean({job_id}) == [".tmp-leftover"]
    assert store.clean(set()) == [job_id]


def test_size_seconds_and_seed_mapping():
    job = to_job_spec(from_json({"prompt": "a", "size": "64x48", "seconds": 5, "seed": 3}), "m")
    assert (job.request.width, job.request.height, job.request.num_frames, job.seed) == (64, 48, 81, 3)
    job = to_job_spec(
        from_form(
            [
                ("prompt", "a"),
                ("width", "64"),
                ("height", "48"),
                ("seconds", "0.5"),
                ("fps", "8"),
                ("request_id", "r"),
                ("entropy", "AB" * 16),
            ]
        ),
        "m",
    )
    assert job.request.num_frames == 5 and job.seed_derivation == "ditproof-seed-v1" and job.entropy == "ab" * 16
    assert seconds_text(81, 16) == "5" and seconds_text(5, 16) == "0.25"
    with pytest.raises(ApiError) as info:
        to_job_spec(from_json({"prompt": "a", "seed": 1, "model": "other"}), "m")
    assert info.value.status == 409
    with pytest.raises(ApiError) as info:
        from_form([("prompt", "a"), ("prompt", "b"), ("seed", "1e3")])
    assert {f for f, _ in info.value.fields} == {"prompt", "seed"}


def test_model_load_takes_the_speed_options(tmp_path):
    from ditproof.server.loading import resolve_model

    args = ["--fuse-projections", "true", "--compile=regional", "--offload-text-encoder", "1", "--encode-threads", "8"]
    args += ["--fuse-elementwise", "true"]
    options = resolve_model(ServerConfig(data_dir=tmp_path), "wan-tiny-random", None, args).options
    assert options.fuse_projections and options.compile == "regional" and options.offload_text_encoder
    assert options.fuse_elementwise
    assert options.encoding.threads == 8 and not options.encoding.mbtree
    plain = resolve_model(ServerConfig(data_dir=tmp_path), "wan-tiny-random").options
    assert not plain.fuse_projections and plain.encoding.threads == 1
