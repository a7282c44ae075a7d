"""A small HTTP client for a ditproof ML node (``ditproof serve``).

Example::

    from ditproof.client import Client

    with Client("http://127.0.0.1:8080", token) as node:
        job = node.create_video(prompt="a red circle", size="64x48", num_frames=5,
                                num_inference_steps=3, request_id="req-1", entropy="ab" * 32)
        job = node.wait(job["id"])
        node.download(job["id"], "out/")       # video.mp4 and record.json, hashes checked

Exceptions::

    ClientError          any failure talking to the node
    ├── ApiError         the node answered with an error (status, code, message, fields)
    └── DownloadIntegrityError a downloaded file's sha256 differs from what the node announced
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ditproof import errors
from ditproof.hashing import atomic_write_bytes

__all__ = ["ApiError", "Client", "ClientError", "DownloadIntegrityError"]


class ClientError(Exception):
    """A failure talking to the node (connection, timeout, unexpected answer)."""


class ApiError(ClientError):
    """An error answer of the node, in its one error shape."""

    def __init__(self, status: int, code: str, message: str, fields: list[dict[str, str]] | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []
        super().__init__(f"HTTP {status} {code}: {message}")


class DownloadIntegrityError(ClientError, errors.IntegrityError):
    """Downloaded bytes that do not hash to what the node announced."""


class Client:
    """Synchronous client for one node.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080``.
        token: the node's API token (``Authorization: Bearer``); None only for health probes.
        timeout: seconds per HTTP call (``create_video_sync`` waits as long as it needs).
    """

    def __init__(self, base_url: str, token: str | None, timeout: float = 60.0, transport: Any = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    # Plumbing.
    def _call(self, method: str, path: str, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, timeout=timeout or self._http.timeout, **kwargs)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ClientError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        except UnicodeEncodeError as exc:
            # Text with lone surrogates (argv bytes that were not UTF-8) cannot be put on the wire.
            bad = exc.object[exc.start : exc.end]
            raise ClientError(
                f"{method} {path}: a value holds {bad!r}, which is not UTF-8 text; allowed: text"
            ) from None
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._call(method, path, **kwargs)
        try:
            data = response.json()
        except json.JSONDecodeError:
            raise ClientError(f"{method} {path}: the node answered {response.status_code} without JSON") from None
        if not isinstance(data, dict):
            raise ClientError(f"{method} {path}: expected a JSON object, got {type(data).__name__}")
        return data

    # Video API.
    def create_video(self, **fields: Any) -> dict[str, Any]:
        """``POST /v1/videos``: queues a job; returns the video object (``id``, ``status``, ...)."""
        return self._json("POST", "/v1/videos", json=_fields(fields))

    def create_video_sync(self, timeout: float = 3600.0, **fields: Any) -> tuple[bytes, dict[str, str]]:
        """``POST /v1/videos/sync``: returns the mp4 bytes and the ``X-Ditproof-*`` headers.

        Raises:
            DownloadIntegrityError: the bytes do not hash to ``X-Ditproof-Video-Sha256``.
        """
        response = self._call("POST", "/v1/videos/sync", timeout=timeout, json=_fields(fields))
        headers = {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("x-ditproof-")}
        _check(response.content, headers.get("x-ditproof-video-sha256"), "video")
        return response.content, headers

    def get_video(self, video_id: str) -> dict[str, Any]:
        """``GET /v1/videos/{id}``."""
        return self._json("GET", f"/v1/videos/{_segment(video_id)}")

    def list_videos(self, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        """``GET /v1/videos``."""
        params: dict[str, Any] = {"limit": limit} | ({"after": after} if after else {})
        return self._json("GET", "/v1/videos", params=params)

    def wait(self, video_id: str, timeout: float = 3600.0, poll: float = 0.2) -> dict[str, Any]:
        """Polls until the job is completed or failed; returns its last video object.

        Raises:
            ClientError: still running after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_video(video_id)
            if job["status"] in ("completed", "failed"):
                return job
            if time.monotonic() > deadline:
                raise ClientError(f"video {video_id}: still {job['status']} after {timeout} s")
            time.sleep(poll)

    def content(self, video_id: str) -> bytes:
        """``GET /v1/videos/{id}/content``: the mp4, checked against its announced sha256."""
        response = self._call("GET", f"/v1/videos/{_segment(video_id)}/content")
        _check(response.content, response.headers.get("x-ditproof-video-sha256"), "video")
        return response.content

    def record(self, video_id: str) -> bytes:
        """``GET /v1/videos/{id}/record``: the inference record's bytes (canonical JSON)."""
        return self._call("GET", f"/v1/videos/{_segment(video_id)}/record").content

    def download(self, video_id: str, out_dir: str | Path) -> dict[str, Path]:
        """Writes ``video.mp4`` and ``record.json`` into ``out_dir`` after checking both hashes.

        The record's sha256 must equal the job's ``record_sha256`` and the video's sha256 the
        record's ``video.sha256``.
        """
        job = self.get_video(video_id)
        record_bytes = self.record(video_id)
        record = json.loads(record_bytes)
        # The stored record ends with a newline; its identity is the canonical JSON without it.
        _check(record_bytes.rstrip(b"\n"), job.get("record_sha256"), "record")
        video = self.content(video_id)
        _check(video, record["video"]["sha256"], "video")
        out = Path(out_dir)
        paths = {"video": out / "video.mp4", "record": out / "record.json"}
        atomic_write_bytes(paths["video"], video)
        atomic_write_bytes(paths["record"], record_bytes)
        return paths

    def delete_video(self, video_id: str) -> dict[str, Any]:
        """``DELETE /v1/videos/{id}``."""
        return self._json("DELETE", f"/v1/videos/{_segment(video_id)}")

    # Validation.
    def validate(
        self,
        record: bytes | str | Path,
        video: bytes | str | Path | None = None,
        video_id: str | None = None,
        request: dict[str, Any] | bytes | Path | None = None,
        *,
        mode: str = "auto",
        spot_segments: int | None = None,
        validator_entropy: str | None = None,
        checkpoints: dict[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """``POST /api/v1/validate`` with a record and either a video (bytes or path) or a stored video id.

        ``request``: the generation request the client made (a dict, the bytes of its JSON, or a
        JSON file); the record's copy must equal it. ``mode``: ``auto`` (the node's default),
        ``full``, ``checkpoints`` or ``spot-check`` (with ``spot_segments`` per expert phase, chosen with
        ``validator_entropy``); with an uploaded video the checkpoint modes need ``checkpoints``: the
        executor's checkpoint files by base name (see :func:`checkpoint_files`), which ``auto`` uses too
        and ``full`` refuses.
        """
        record_bytes = Path(record).read_bytes() if isinstance(record, str | Path) else record
        files: list[tuple[str, Any]] = [("record", ("record.json", record_bytes, "application/json"))]
        data: dict[str, str] = {}
        if video is not None:
            video_bytes = Path(video).read_bytes() if isinstance(video, str | Path) else video
            files.append(("video", ("video.mp4", video_bytes, "video/mp4")))
        if video_id is not None:
            data["video_id"] = video_id
        if request is not None:
            if isinstance(request, bytes):
                request_bytes = request
            else:
                request_bytes = request.read_bytes() if isinstance(request, Path) else json.dumps(request).encode()
            files.append(("request", ("request.json", request_bytes, "application/json")))
        data.update({k: str(v) for k, v in _mode_fields(mode, spot_segments, validator_entropy).items()})
        for name, content in (checkpoints or {}).items():
            files.append(("checkpoint", (name, content, "application/octet-stream")))
        return self._json("POST", "/api/v1/validate", files=files, data=data, timeout=3600.0)

    def validate_stored(
        self,
        video_id: str,
        request: dict[str, Any] | None = None,
        *,
        mode: str = "auto",
        spot_segments: int | None = None,
        validator_entropy: str | None = None,
    ) -> dict[str, Any]:
        """``POST /api/v1/validate`` of a stored video against its own record (and the client's request);
        the checkpoint modes read the checkpoint files stored with it."""
        body: dict[str, Any] = {"video_id": video_id}
        if request is not None:
            body["request"] = request
        body.update(_mode_fields(mode, spot_segments, validator_entropy))
        return self._json("POST", "/api/v1/validate", json=body, timeout=3600.0)

    # Management.
    def state(self) -> dict[str, Any]:
        """``GET /api/v1/state``."""
        return self._json("GET", "/api/v1/state")

    def inference_up(
        self, model: str, dtype: str | None = None, additional_args: list[str] | None = None
    ) -> dict[str, Any]:
        """``POST /api/v1/inference/up`` (returns at once; see :meth:`wait_ready`)."""
        body: dict[str, Any] = {"model": model, "additional_args": additional_args or []}
        if dtype is not None:
            body["dtype"] = dtype
        return self._json("POST", "/api/v1/inference/up", json=body)

    def inference_down(self) -> dict[str, Any]:
        """``POST /api/v1/inference/down``."""
        return self._json("POST", "/api/v1/inference/down")

    def stop(self) -> dict[str, Any]:
        """``POST /api/v1/stop``."""
        return self._json("POST", "/api/v1/stop")

    # Proof-of-Compute (Gonka's PoC v2 shapes).
    def pow_init_generate(self, **fields: Any) -> dict[str, Any]:
        """``POST /api/v1/inference/pow/init/generate``: start a continuous round (block_hash, public_key,
        block_height, node_id, node_count, batch_size, params {model, seq_len, k_dim}, url)."""
        return self._json("POST", "/api/v1/inference/pow/init/generate", json=_fields(fields))

    def pow_generate(self, timeout: float = 3600.0, **fields: Any) -> dict[str, Any]:
        """``POST /api/v1/inference/pow/generate`` (nonces; with ``validation`` and ``stat_test`` to check)."""
        return self._json("POST", "/api/v1/inference/pow/generate", json=_fields(fields), timeout=timeout)

    def pow_result(self, request_id: str) -> dict[str, Any]:
        """``GET /api/v1/inference/pow/generate/{id}``."""
        return self._json("GET", f"/api/v1/inference/pow/generate/{_segment(request_id)}")

    def pow_wait(self, request_id: str, timeout: float = 3600.0, poll: float = 0.2) -> dict[str, Any]:
        """Polls a queued PoC request until it is completed, failed or cancelled."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.pow_result(request_id)
            if result["status"] in ("completed", "failed", "cancelled"):
                return result
            if time.monotonic() > deadline:
                raise ClientError(f"PoC request {request_id}: still {result['status']} after {timeout} s")
            time.sleep(poll)

    def pow_status(self) -> dict[str, Any]:
        """``GET /api/v1/inference/pow/status``."""
        return self._json("GET", "/api/v1/inference/pow/status")

    def pow_stop(self) -> dict[str, Any]:
        """``POST /api/v1/inference/pow/stop``."""
        return self._json("POST", "/api/v1/inference/pow/stop")

    def health(self) -> dict[str, Any]:
        """``GET /health`` (no token needed)."""
        return self._json("GET", "/health")

    def wait_ready(self, timeout: float = 600.0, poll: float = 0.2) -> dict[str, Any]:
        """Polls ``/api/v1/state`` until a model is up (``inference_healthy``).

        Raises:
            ClientError: the load failed (the node went back to STOPPED) or took too long.
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if state.get("inference_healthy"):
                return state
            if state["state"] != "INFERENCE":
                raise ClientError(f"the node is {state['state']}: {state.get('last_error') or 'no model is up'}")
            if time.monotonic() > deadline:
                raise ClientError(f"no model up after {timeout} s (state {state['state']})")
            time.sleep(poll)


def _fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def _check(data: bytes, expected: str | None, what: str) -> None:
    if expected is None:
        raise DownloadIntegrityError(f"{what}: the node announced no sha256 to check against")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DownloadIntegrityError(f"{what}: sha256 {actual}, the node announced {expected}")


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(error["status"], error["code"], error["message"], error.get("fields"))
    except (json.JSONDecodeError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.text[:500])


def _segment(value: str) -> str:
    """``value`` as one URL path segment, percent-encoded: an id goes to the node as typed (a
    ``/`` or a control character cannot change the path), and the node checks its form."""
    try:
        return quote(value, safe="", errors="surrogateescape")
    except UnicodeEncodeError:
        raise ClientError(
            f"id: got {value!r}, which is not text that can be sent; allowed: an id from the node"
        ) from None


def _mode_fields(mode: str, spot_segments: int | None, validator_entropy: str | None) -> dict[str, Any]:
    """The validation mode's fields of a validate body (the defaults left out)."""
    fields: dict[str, Any] = {} if mode == "auto" else {"mode": mode}
    if spot_segments is not None:
        fields["spot_segments"] = spot_segments
    if validator_entropy is not None:
        fields["validator_entropy"] = validator_entropy
    return fields


def checkpoint_files(record: dict[str, Any], folder: str | Path) -> dict[str, bytes]:
    """The executor's checkpoint files a record names, read from its output folder, by base name
    (what :meth:`Client.validate` uploads in every mode but ``full``). Missing files are left
    out: the node's verdict names them."""
    files: dict[str, bytes] = {}
    for ref in record.get("checkpoints") or []:
        path = Path(folder) / str(ref.get("file", ""))
        if ref.get("file") and path.is_file():
            files[path.name] = path.read_bytes()
    return files
