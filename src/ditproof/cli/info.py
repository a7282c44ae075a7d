"""``ditproof info``: presets and the local runtime.

Without ``--probe`` it imports neither torch nor diffusers (a second or more on two cores):
versions come from the installed packages' metadata, and the GPU support torch was built with
from torch's ``version.py``, read as text. ``--probe`` imports torch for what only a running
torch can tell: the CPU capability it dispatches to (part of the runtime class) and the CUDA
devices it sees.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import platform
from pathlib import Path
from typing import Any

import typer

from ditproof.cli.common import out

NOT_PROBED = "not probed (`ditproof info --probe` imports torch)"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def torch_build() -> dict[str, str | None]:
    """``cuda`` and ``hip`` of the installed torch's ``version.py``, read without importing torch.

    Both None for a CPU-only build; an empty dict when torch is not installed or the file has no
    such assignments.
    """
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return {}
    try:
        tree = ast.parse((Path(spec.origin).parent / "version.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return {}
    found: dict[str, str | None] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id in ("cuda", "hip") and isinstance(value, ast.Constant):
            found[target.id] = None if value.value is None else str(value.value)
    return found


def runtime_facts(probe: bool) -> dict[str, Any]:
    """This machine's runtime; with ``probe``, what an imported torch reports too."""
    from ditproof import __version__

    build = torch_build()
    facts: dict[str, Any] = {
        "ditproof": __version__,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "av": _version("av"),
        "cpu_arch": platform.machine(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda_version": build.get("cuda"),
        "hip_version": build.get("hip"),
    }
    if not probe:
        return facts
    import torch

    facts.update(
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cuda_available=torch.cuda.is_available(),
        cuda_devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    )
    return facts


def info_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    probe: bool = typer.Option(
        False,
        "--probe",
        help="Also import torch (a second or more) to report its CPU capability and the CUDA devices it sees.",
    ),
) -> None:
    """List the model presets and describe this machine's runtime (fast: torch only with --probe)."""
    from ditproof.models.presets import PRESETS, native_sizes

    runtime = runtime_facts(probe)
    if as_json:
        presets = {
            name: {"description": p.description, "dtype": p.default_dtype, "native_size": native_sizes(name)}
            for name, p in PRESETS.items()
        }
        out.print_json(json.dumps({"presets": presets, "runtime": runtime, "probed": probe}))
        return
    from rich.table import Table

    table = Table(title="model presets")
    table.add_column("preset")
    table.add_column("dtype")
    table.add_column("native size (WxHxF)")
    table.add_column("description")
    for name, preset in PRESETS.items():
        size = native_sizes(name)
        table.add_row(
            name,
            preset.default_dtype,
            f"{size['width']}x{size['height']}x{size['num_frames']}, {size['num_inference_steps']} steps",
            preset.description,
        )
    out.print(table)
    rt = Table(title="runtime")
    rt.add_column("key")
    rt.add_column("value")
    for key, value in runtime.items():
        rt.add_row(key, "none" if value is None else str(value))
    if not probe:
        rt.add_row("cpu_capability, CUDA devices", NOT_PROBED)
    out.print(rt)
