"""The validation modes share one set of preflight keywords; a misspelt one is refused."""

from __future__ import annotations

import pytest

from ditproof.validation import validate, validate_auto
from ditproof.validation.checkpoints import validate_checkpoints, validate_spot_check


@pytest.mark.parametrize(
    "call",
    [
        lambda: validate(None, b"", None, expected_requests={}),  # type: ignore[arg-type, call-arg]
        lambda: validate_checkpoints(None, b"", None, artifact_dir="x"),  # type: ignore[arg-type, call-arg]
        lambda: validate_spot_check(None, b"", None, 1, validator="x"),  # type: ignore[arg-type, call-arg]
        lambda: validate_auto(None, b"", None, artifact="x"),  # type: ignore[arg-type, call-arg]
    ],
)
def test_a_misspelt_keyword_is_refused_before_anything_runs(call) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        call()
