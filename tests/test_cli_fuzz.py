"""A property-based fuzz pass over the command line: hostile argv in, an exit code out.

Each leaf command runs in-process through :func:`ditproof.cli.main.main` with argv drawn by
hypothesis: its own flags (``--flag value`` and ``--flag=value``) with odd values (numbers past
any bound, nan, full-width digits, empty strings, text with lone surrogates as Python decodes
argv bytes that are not UTF-8, paths with ``..``), unknown flags and stray arguments. Every run
must end with exit 0-4, print no traceback and no "internal error" (a crash the CLI caught), and
write nothing outside its own scratch folder. stdout is strict UTF-8 and stderr
backslashreplace, as in a real process under a UTF-8 locale; a few runs go through a real
subprocess with argv given as raw bytes.

A command is fuzzed after a prefix that keeps a valid run cheap (the tiny model, one step); the
commands whose valid runs are always long (``demo``, ``poc calibrate``) are only checked with
hostile flags in :func:`test_commands_that_always_run_long_refuse_bad_flags`. Options that name
a network address (``--url``, ``--ray-address``, ...) are never fuzzed: clients talk to a closed
loopback port.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ditproof.cli.main import app, main
from test_server_support import free_port

ROOT = Path(__file__).resolve().parent.parent
EXIT_CODES = {0, 1, 2, 3, 4}

PREFIX: dict[tuple[str, ...], list[str]] = {
    ("generate",): [
        "--model",
        "wan-tiny-random",
        "--steps",
        "1",
        "--prompt",
        "a red circle",
        "--out",
        "out",
        "--quiet",
    ],
    ("price", "calibrate"): [
        "--out",
        "c.json",
        "--sizes",
        "16x16x1,32x32x1,48x48x1",
        "--repeats",
        "1",
        "--warmup",
        "0",
    ],
    ("poc", "generate"): [
        *("--model", "wan-tiny-random", "--count", "2", "--block-hash", "ab" * 32, "--public-key", "key"),
        *("--out", "poc", "--latent-height", "8", "--latent-width", "8"),
    ],
    ("serve",): ["--print-openapi"],
}
"""Flags put first, so that a run the fuzz leaves valid is cheap; later flags override them."""

LONG: dict[tuple[str, ...], list[list[str]]] = {
    ("demo",): [["--no-such-flag"], ["--out"], ["--prompt", "\udcff"], ["--prompt", ""], ["x"]],
    ("poc", "calibrate"): [
        ["--nonces", "0"],
        ["--first-nonce", "-1"],
        ["--first-nonce", str(2**32)],
        ["--batch-sizes", "1,x"],
        ["--model", "\udcff"],
        ["--latent-height", "9" * 30],
        ["--no-such-flag"],
    ],
}
"""Commands whose valid runs always take long (the demo, a calibration), with argv each must
refuse (exit 2) before any long work."""

NEVER = {"--url", "--omni-url", "--ray-address", "--host", "--port", "--help"}
"""Options not fuzzed: network addresses (nothing but a closed loopback port is ever dialled)."""

HOSTILE = [
    *("0", "-1", "1", "3", "9" * 30, "-" + "9" * 30, str(2**64), "1e309", "-1e309", "nan", "inf", "-0"),
    *("0x10", "1_000", "５", " 5", "", " ", "-", "--", "=", "a=b", "1,2,x", "64x48", "0x0", "abc"),
    *("\udcff\udcfe", "caf\udce9", "\u202e", "\ufeff"),
    *("..", ".", "../x", "x/../../y", "a/b/c", "../../z", "wan-tiny-random"),
]
"""Odd values. Paths stay within two levels above the working folder (inside the scratch folder);
no absolute path: a valid run may write where it is told to."""

UNKNOWN = ["--no-such-flag", "-x", "--WIDTH", "--width-", "---", "--=", "-Z9"]

TEXT = st.text(
    alphabet=st.characters(exclude_characters="/\x00", exclude_categories=()),
    max_size=16,
)
"""Any code point but the path separator and NUL (argv cannot hold NUL), lone surrogates included."""
VALUE = st.one_of(st.sampled_from(HOSTILE), TEXT)


def leaf_commands() -> dict[tuple[str, ...], tuple[list[str], list[str]]]:
    """Every leaf command: path → (options that take a value, flags), from the typer tree."""
    from typer._click import core

    found: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}

    def walk(command, path: tuple[str, ...], context) -> None:
        if hasattr(command, "list_commands"):
            for name in command.list_commands(context):
                command._loading = True  # a lazy group imports the command rather than its help line
                sub = command.get_command(context, name)
                walk(sub, (*path, name), core.Context(sub, parent=context, info_name=name))
            if not command.params:
                return
            # A group that runs on its own (`ditproof price` quotes) is fuzzed with its options too.
        options: list[str] = []
        flags: list[str] = []
        for param in command.params:
            if param.param_type_name != "option":
                continue
            names = [name for name in [*param.opts, *param.secondary_opts] if name not in NEVER]
            (flags if param.is_flag else options).extend(names)
        found[path] = (options, flags)

    group = typer.main.get_command(app)
    walk(group, (), group.make_context("ditproof", ["--help"], resilient_parsing=True))
    return found


LEAVES = leaf_commands()
FUZZED = sorted(path for path in LEAVES if path not in LONG)


def argv_of(path: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    options, flags = LEAVES[path]
    tokens = [
        st.sampled_from(UNKNOWN).map(lambda flag: [flag]),
        VALUE.map(lambda value: [value]),
    ]
    if options:
        tokens.append(st.tuples(st.sampled_from(options), VALUE).map(list))
        tokens.append(st.tuples(st.sampled_from(options), VALUE).map(lambda pair: [f"{pair[0]}={pair[1]}"]))
    if flags:
        tokens.append(st.sampled_from(flags).map(lambda flag: [flag]))
    return st.lists(st.one_of(*tokens), max_size=5).map(
        lambda drawn: [*path, *PREFIX.get(path, []), *(token for group in drawn for token in group)]
    )


ARGV = st.sampled_from(FUZZED).flatmap(argv_of)


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``ditproof ARGV``, streams encoded as a real process's."""
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict", write_through=True)
    stderr = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace", write_through=True)
    code: int
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:  # sys.exit("message"): Python prints it and exits 1
                print(exc.code, file=sys.stderr)
                code = 1
    return code, out_bytes.getvalue().decode("utf-8"), err_bytes.getvalue().decode("utf-8")


def repo_state() -> str:
    """What git sees changed or added in the checkout (ignored files aside)."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout if done.returncode == 0 else "(not a git checkout)"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A scratch root, HOME inside it, clients pointed at a closed loopback port; restored after."""
    root = tmp_path_factory.mktemp("cli-fuzz")
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.update(
        HOME=str(root / "home"),
        DITPROOF_URL=f"http://127.0.0.1:{free_port()}",
        DITPROOF_API_TOKEN="fuzz-token-0123456789abcdef",
        HF_HUB_OFFLINE="1",
    )
    os.environ.pop("DITPROOF_WAN22_PATH", None)
    (root / "home").mkdir()
    before = repo_state()
    yield root
    os.chdir(saved_cwd)
    os.environ.clear()
    os.environ.update(saved_env)
    assert repo_state() == before, "a command changed files in the checkout"
    assert {p.name for p in root.iterdir()} <= {"examples", "home"}, sorted(root.iterdir())


def scratch(root: Path) -> Path:
    """A new working folder two levels below its example's own folder (so ``../..`` stays inside)."""
    examples = root / "examples"
    examples.mkdir(exist_ok=True)
    work = examples / str(len(list(examples.iterdir()))) / "a" / "work"
    work.mkdir(parents=True)
    return work


def check(argv: list[str], code: int, stdout: str, stderr: str) -> None:
    shown = f"argv={argv!r}\nexit {code}\nstderr:\n{stderr[-3000:]}"
    assert code in EXIT_CODES, shown
    assert "Traceback" not in stderr and "Traceback" not in stdout, shown
    assert "internal error" not in stderr, shown


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(argv=ARGV)
def test_any_argv_ends_in_an_exit_code_and_writes_only_where_told(sandbox, argv):
    work = scratch(sandbox)
    os.chdir(work)
    code, stdout, stderr = run_in_process(argv)
    check(argv, code, stdout, stderr)
    # Whatever the run wrote is inside its own example folder (its paths climb at most ../..).
    strays = [p.name for p in (sandbox / "examples").iterdir() if not p.name.isdigit()]
    assert not strays, (argv, strays)


@pytest.mark.parametrize(("path", "extra"), [(path, extra) for path, cases in LONG.items() for extra in cases])
def test_commands_that_always_run_long_refuse_bad_flags(sandbox, path, extra):
    os.chdir(scratch(sandbox))
    argv = [*path, *extra]
    code, stdout, stderr = run_in_process(argv)
    check(argv, code, stdout, stderr)
    assert code == 2, (argv, stderr)


def test_every_command_is_fuzzed_or_listed_as_long():
    assert set(LEAVES) == set(FUZZED) | set(LONG)
    expected = {("generate",), ("validate",), ("info",), ("price",), ("client", "generate"), ("experiment", "run")}
    assert expected <= set(FUZZED)


@pytest.mark.parametrize(
    "argv",
    [
        [b"generate", b"--prompt", b"a red \xff\xfe circle", b"--out", b"out"],
        [b"generate", b"--prompt", b"x", b"--out", b"out\xff", b"--width", b"\xef\xbc\x95"],
        [b"price", b"--width", b"99999999999999999999999999"],
        [b"validate", b"--record", b"../\xff/record.json"],
        [b"client", b"state", b"--no-such-flag\xff"],
        [b"info", b"--json", b"\xff"],
    ],
)
def test_raw_bytes_argv_in_a_real_process(sandbox, argv):
    # The interpreter decodes argv bytes that are not UTF-8 with surrogateescape; the CLI must
    # refuse them (or report them) without a traceback.
    work = scratch(sandbox)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"ditproof.cli.main", *argv],
        cwd=work,
        capture_output=True,
        env=env,
        timeout=300,
    )
    stderr = done.stderr.decode("utf-8", "backslashreplace")
    assert done.returncode in EXIT_CODES and done.returncode != 0, (argv, done.returncode, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert not (work / "out" / "record.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--print-openapi", "--model", " "], "model: got ' '; allowed: one of"),
        (["serve", "--log-level", "loud"], "log-level: got 'loud'; allowed: critical,"),
        (["price", "calibrate", "--out", "c.json", "--device", "0"], "device: got '0'"),
        (["client", "pow", "result", "\x1f"], "/api/v1/inference/pow/generate/%1F"),
        (["client", "validate", "--record", "nope.json"], "record: nope.json cannot be read"),
        (["price", "calibrate", "--out", "c.json", "--sizes", "16x16x1", "--out", ""], "--out: got '.', a folder"),
        (["price", "import", "r.json", "--into", "."], "--into: got '.', a folder"),
        # Unbounded, these ran "forever" (10^30 timed passes).
        (["price", "calibrate", "--out", "c.json", "--repeats", "9" * 30], "Invalid value for '--repeats'"),
        (["price", "calibrate", "--out", "c.json", "--warmup", "9" * 30], "Invalid value for '--warmup'"),
        (["price", "--coefficients", ""], "coefficients: got '.', a folder"),
        (["poc", "calibrate", "--from", "p.json", "--policy-out", ""], "--policy-out: got '.', a folder"),
        (["experiment", "analyze", "--folder", "f", "--thresholds-out", ""], "--thresholds-out: got '.', a folder"),
    ],
)
def test_what_the_fuzz_found_is_refused_with_a_message(sandbox, argv, message):
    # Each was an "internal error" (exit 1 and an exception's name) before.
    os.chdir(scratch(sandbox))
    code, stdout, stderr = run_in_process(argv)
    check(argv, code, stdout, stderr)
    assert message in stderr, stderr
    assert code == (1 if argv[0] == "client" and argv[1] == "pow" else 2), (code, stderr)
