"""Prompt sets of the experiments: the file format, the shipped sets and their generators.

File format (two forms, chosen by the extension):

* ``.jsonl``: one JSON object per line, ``{"id": "...", "prompt": "..."}`` with optional
  ``"negative_prompt"`` (default empty) and ``"tags"`` (an object of strings, kept for analysis).
  ``id`` is 1-64 of ``A-Z a-z 0-9 . _ -`` and unique in the file; it becomes the request id of
  the prompt's jobs, so the seed follows from it.
* ``.txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped; the id of
  the prompt on line ``n`` (1-based) is ``p{n:05d}``.

Shipped sets (``data/prompts/``), named without extension in an experiment file:

* ``grammar``: 200 captions of the shipped shapes model's held-out split (caption combinations it
  never saw in training, from ``ditproof.training.grammar``), e.g. "a red circle moves right on a
  brown background";
* ``freetext``: 1,200 diverse free-text prompts for the real model, combined from the lists in
  ``freetext-lists.toml`` (subject, action and setting of one group, then time or light, camera
  and style).
* ``mixed``: 1,000 prompts for calibrations that need many: every held-out grammar caption (393,
  ids ``g0001``…, the first 200 those of ``grammar``) then the first free-text prompts (ids
  ``f0001``…) up to 1,000.

Both are generated here without any random number generator: candidates are ordered by the
sha256 of ``"{salt}:{index}:{part}"``, so the files are the same on every machine. Rebuild them
with ``python -m ditproof.experiment.prompts`` (a test checks the shipped files equal a rebuild).
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ditproof.errors import InvalidInputError
from ditproof.hashing import atomic_write_text

PROMPTS_DIR = Path(__file__).parent / "data" / "prompts"
SHIPPED = {"grammar": "grammar.jsonl", "freetext": "freetext.jsonl", "mixed": "mixed.jsonl"}
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

GRAMMAR_COUNT = 200
FREETEXT_COUNT = 1200
MIXED_COUNT = 1000


class Prompt(BaseModel):
    """One prompt of a set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


def _rank(salt: str, *parts: object) -> str:
    return hashlib.sha256(":".join([salt, *map(str, parts)]).encode()).hexdigest()


def _pick(options: list[str] | tuple[str, ...], salt: str, *parts: object) -> str:
    return options[int(_rank(salt, *parts), 16) % len(options)]


def grammar_prompts(count: int = GRAMMAR_COUNT, salt: str = "ditproof-grammar-v2") -> list[Prompt]:
    """Captions of the shipped shapes model's held-out split (``ditproof.training.grammar``).

    Single-object combinations (shape, colour, direction, background) that the shipped model never
    saw in training, ordered by sha256 of the salt and the combination, the first ``count``.
    """
    from ditproof.training.grammar import SceneSpec, combinations

    held_out = combinations("heldout")
    held_out.sort(key=lambda c: _rank(salt, c[0].shape, c[0].color, c[0].direction, c[1]))
    prompts = []
    for index, (obj, background) in enumerate(held_out[:count]):
        prompts.append(
            Prompt(
                id=f"g{index + 1:04d}",
                prompt=SceneSpec(objects=(obj,), background=background).caption(),
                tags={"color": obj.color, "shape": obj.shape, "direction": obj.direction, "background": background},
            )
        )
    return prompts


def freetext_prompts(count: int = FREETEXT_COUNT, salt: str = "ditproof-freetext-v1") -> list[Prompt]:
    """Diverse free-text prompts from ``freetext-lists.toml``, deduplicated, groups taken in turn."""
    lists = tomllib.loads((PROMPTS_DIR / "freetext-lists.toml").read_text())
    groups: list[dict[str, Any]] = lists["groups"]
    seen: set[str] = set()
    prompts: list[Prompt] = []
    index = 0
    while len(prompts) < count:
        group = groups[index % len(groups)]
        subject = _pick(group["subjects"], salt, index, "subject")
        action = _pick(group["actions"], salt, index, "action")
        setting = _pick(group["settings"], salt, index, "setting")
        time = _pick(lists["times"], salt, index, "time")
        camera = _pick(lists["cameras"], salt, index, "camera")
        style = _pick(lists["styles"], salt, index, "style")
        text = f"{subject[0].upper()}{subject[1:]} {action} {setting} {time}, {camera}, {style}."
        index += 1
        if text in seen:
            continue
        seen.add(text)
        prompts.append(Prompt(id=f"f{len(prompts) + 1:04d}", prompt=text, tags={"group": group["name"]}))
    return prompts


def to_jsonl(prompts: list[Prompt]) -> str:
    """The JSON Lines text of a prompt set (keys sorted, one object per line)."""
    return "".join(json.dumps(p.model_dump(exclude_defaults=True), sort_keys=True) + "\n" for p in prompts)


def resolve_prompt_source(source: str, base_dir: Path) -> Path:
    """The file of ``source``: a shipped set name, or a path (relative to ``base_dir``).

    Raises:
        InvalidInputError: when it is neither.
    """
    if source in SHIPPED:
        return PROMPTS_DIR / SHIPPED[source]
    path = Path(source) if Path(source).is_absolute() else base_dir / source
    if path.suffix not in (".jsonl", ".txt") or not path.is_file():
        raise InvalidInputError(
            f"prompts: got {source!r}; allowed: {', '.join(SHIPPED)}, or an existing .jsonl or .txt file"
        )
    return path


def load_prompts(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Reads a prompt file (see the module docstring), keeping the first ``limit`` prompts.

    Raises:
        InvalidInputError: naming the line and what is wrong with it.
    """
    file = Path(path)
    try:
        lines = file.read_text().splitlines()
    except OSError as exc:
        raise InvalidInputError(f"prompts {file}: cannot be read ({exc.strerror})") from None
    prompts: list[Prompt] = []
    for number, line in enumerate(lines, start=1):
        if file.suffix == ".txt":
            if line.strip() and not line.lstrip().startswith("#"):
                prompts.append(Prompt(id=f"p{number:05d}", prompt=line.strip()))
            continue
        if not line.strip():
            continue
        try:
            prompt = Prompt.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise InvalidInputError(
                f"prompts {file}, line {number}: {where}: {first['msg']}; allowed: a JSON object with id, "
                "prompt, and optional negative_prompt and tags"
            ) from None
        if not _ID.match(prompt.id):
            raise InvalidInputError(
                f"prompts {file}, line {number}: id: got {prompt.id!r}; allowed: 1-64 of A-Z a-z 0-9 . _ -"
            )
        prompts.append(prompt)
    ids = [p.id for p in prompts]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InvalidInputError(f"prompts {file}: duplicate ids {duplicates[:5]}; allowed: unique ids")
    if not prompts:
        raise InvalidInputError(f"prompts {file}: no prompts; allowed: at least one")
    return prompts[:limit] if limit else prompts


def mixed_prompts(count: int = MIXED_COUNT) -> list[Prompt]:
    """Every held-out grammar caption, then free-text prompts, ``count`` in all."""
    from ditproof.training.grammar import combinations

    grammar = grammar_prompts(min(count, len(combinations("heldout"))))
    return grammar + freetext_prompts(count - len(grammar))


def write_shipped() -> None:
    """Regenerates the shipped prompt files."""
    atomic_write_text(PROMPTS_DIR / SHIPPED["grammar"], to_jsonl(grammar_prompts()))
    atomic_write_text(PROMPTS_DIR / SHIPPED["freetext"], to_jsonl(freetext_prompts()))
    atomic_write_text(PROMPTS_DIR / SHIPPED["mixed"], to_jsonl(mixed_prompts()))
