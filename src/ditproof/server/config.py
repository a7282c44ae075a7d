"""Configuration of the ML-node service (``ditproof serve``).

Read from an optional TOML or JSON file, then overridden by command-line flags; the bearer
token may also come from the ``DITPROOF_API_TOKEN`` environment variable. The server refuses to
start without a token: there is no anonymous mode.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ditproof.errors import InvalidInputError
from ditproof.protocol.options import DType

CONFIG_SCHEMA: Literal["ditproof.server-config/1"] = "ditproof.server-config/1"
TOKEN_ENV = "DITPROOF_API_TOKEN"
MIN_TOKEN_CHARS = 16


class ModelAlias(BaseModel):
    """A model name clients may ask for, mapped to a preset and (for real weights) a local folder.

    Clients never pass file paths: only the operator maps names to folders, here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str
    path: str | None = None


class ServerConfig(BaseModel):
    """Everything the service needs to start.

    Attributes:
        host, port: where uvicorn listens.
        data_dir: the job database (``jobs.sqlite3``) and the artifact store (``artifacts/``).
        api_token: the bearer token every non-health endpoint requires.
        model: a model to load at start (state INFERENCE at once); none: start STOPPED.
        device, dtype: where and in which precision models are loaded (dtype none: the preset's).
        max_queue: jobs waiting beyond the running one; past it, requests get 429.
        max_attempts: how many times a job interrupted by a crash is started before it fails.
        max_body_bytes: largest JSON or form body; max_upload_bytes: largest upload (validate).
        sync_timeout_s: how long ``POST /v1/videos/sync`` waits for its job.
        models: extra model names (aliases) clients may load through ``/api/v1/inference/up``.
        thresholds: the validation thresholds file (``ditproof.validation.policy``) for videos that do
            not match exactly; none: such a verdict is ``error``.
        validators: the validator registry named in ``delegate`` verdicts.
        allowed_classes: the network's allowed runtime classes (``ditproof.validation.allowed``);
            none: the packaged list.
        poc_callback_interval_s: how often a PoC round POSTs its new artifacts to the callback URL.
        poc_max_seq_len: largest PoC ``params.seq_len`` (video tokens per nonce) this node computes.
        poc_max_batch_tokens: largest ``batch_size × seq_len`` of one PoC forward batch (memory).
        poc_max_nonces: most nonces in one PoC ``generate`` request.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["ditproof.server-config/1"] = CONFIG_SCHEMA
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Path("ditproof-data")
    api_token: str | None = Field(default=None, repr=False)
    model: str | None = None
    model_path: str | None = None
    device: str = "cpu"
    dtype: DType | None = None
    max_queue: int = Field(default=16, ge=1, le=100_000)
    max_attempts: int = Field(default=2, ge=1, le=10)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024, le=64 * 1024**3)
    sync_timeout_s: float = Field(default=3600.0, gt=0, le=86_400)
    models: dict[str, ModelAlias] = {}
    thresholds: Path | None = None
    validators: Path | None = None
    allowed_classes: Path | None = None
    poc_callback_interval_s: float = Field(default=5.0, gt=0, le=3600)
    poc_max_seq_len: int = Field(default=4096, ge=1, le=32 * 128 * 128)
    poc_max_batch_tokens: int = Field(default=65_536, ge=1)
    poc_max_nonces: int = Field(default=10_000, ge=1, le=10_000)

    @field_validator("api_token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and (len(value) < MIN_TOKEN_CHARS or not value.isprintable() or " " in value):
            raise ValueError(
                f"got a token of {len(value)} characters; allowed: at least {MIN_TOKEN_CHARS} printable "
                "characters without spaces"
            )
        return value

    def token(self) -> str:
        """The bearer token, checked to be set."""
        if self.api_token is None:
            raise InvalidInputError(
                f"api_token: not set; allowed: set {TOKEN_ENV} or api_token in the config file "
                f"(at least {MIN_TOKEN_CHARS} characters); the server never runs without authentication"
            )
        return self.api_token


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Builds the configuration: file (TOML or JSON) < environment token < explicit overrides.

    Overrides whose value is None are ignored, so CLI flags left unset keep the file's values.

    Raises:
        InvalidInputError: unreadable file, unknown keys or values out of bounds (each named).
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text()
        except OSError as exc:
            raise InvalidInputError(f"config: {file} cannot be read ({exc.strerror})") from None
        try:
            data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInputError(
                f"config: {file} is not valid {file.suffix.lstrip('.') or 'TOML'} ({exc})"
            ) from None
    if os.environ.get(TOKEN_ENV):
        data["api_token"] = os.environ[TOKEN_ENV]
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "config"
            shown = "<hidden>" if where == "api_token" else repr(error.get("input"))
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(
                f"{where}: {message}" if error["type"] == "value_error" else f"{where}: got {shown}; {message}"
            )
        raise InvalidInputError("invalid server configuration: " + "; ".join(problems)) from None
