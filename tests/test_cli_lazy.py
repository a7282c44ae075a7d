"""The CLI loads command modules on first use: `ditproof client ...` runs without torch."""

import json
import subprocess
import sys

import typer

from ditproof.cli.main import COMMANDS, app

CHECK = """
import sys
from ditproof.cli.main import main
try:
    main(["client", "state", "--url", "http://127.0.0.1:9"])
except SystemExit as exc:
    print("exit", exc.code)
import ditproof.hashing  # canonical JSON and file hashes need no torch either
print("heavy", sorted(m for m in ("torch", "diffusers", "transformers", "numpy") if m in sys.modules))
"""


def test_client_commands_do_not_import_torch():
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert "exit 1" in run.stdout and "Connection refused" in run.stderr, run.stdout + run.stderr
    assert "heavy []" in run.stdout, run.stdout


def test_every_registered_command_resolves_under_its_name():
    group = typer.main.get_command(app)
    context = group.make_context("ditproof", ["--help"], resilient_parsing=True)
    assert [name for name in group.list_commands(context) if name in COMMANDS] == list(COMMANDS)
    for name in COMMANDS:
        command = group.get_command(context, name)
        assert command is not None and command.name == name
        assert command.help or command.callback.__doc__
    assert group.get_command(context, "no-such-command") is None


HELP = """
import sys
from ditproof.cli.main import main
try:
    main(["--help"])
except SystemExit as exc:
    print("exit", exc.code)
print("heavy", sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
"""


def test_help_lists_every_command_without_importing_them():
    # `ditproof --help` took 10-12 s on two cores when it imported torch and diffusers for the
    # commands' one-line help; the lines now come from COMMAND_HELP.
    from ditproof.cli.main import COMMAND_HELP

    run = subprocess.run([sys.executable, "-c", HELP], capture_output=True, text=True, timeout=120)
    assert "exit 0" in run.stdout and "heavy []" in run.stdout, run.stdout + run.stderr
    assert set(COMMAND_HELP) == set(COMMANDS)
    for name in COMMANDS:
        assert name in run.stdout


def test_the_protocol_models_import_without_torch():
    # Reading a request, record, verdict or PoC file needs pydantic, not torch.
    code = (
        "import sys\n"
        "import ditproof.protocol.request, ditproof.protocol.record, ditproof.protocol.verdict\n"
        "import ditproof.protocol.options, ditproof.protocol.poc, ditproof.protocol.pricing\n"
        "print('heavy', sorted(m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "heavy []" in run.stdout, run.stdout + run.stderr


FAST = """
import json, sys
from ditproof.cli.main import main
for argv in (["info", "--json"], ["generate", "--help"], ["poc", "generate", "--help"]):
    try:
        main(argv)
    except SystemExit as exc:
        print("exit", argv[0], exc.code)
print("heavy", sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
"""


def test_info_and_command_help_import_no_torch():
    # `ditproof info` took 4-5 s on two cores when it imported torch and diffusers; now it reads
    # package metadata (bench/cli_startup.py times it).
    run = subprocess.run([sys.executable, "-c", FAST], capture_output=True, text=True, timeout=120)
    assert "heavy []" in run.stdout, run.stdout + run.stderr
    data = json.loads(run.stdout[: run.stdout.index("\nexit info")])
    assert data["probed"] is False and "cpu_capability" not in data["runtime"]
    assert data["presets"]["wan-shapes-small"]["native_size"] == {
        "width": 128,
        "height": 128,
        "num_frames": 17,
        "num_inference_steps": 20,
    }
    assert data["presets"]["wan2.2-t2v-a14b"]["native_size"]["num_frames"] == 81


def test_info_reads_torch_build_as_torch_reports_it():
    import torch

    from ditproof.cli.info import runtime_facts, torch_build

    assert torch_build() == {"cuda": torch.version.cuda, "hip": torch.version.hip}
    probed = runtime_facts(probe=True)
    assert probed["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert probed["cuda_available"] == torch.cuda.is_available()
    assert probed["torch"] == torch.__version__
