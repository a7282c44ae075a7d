"""``ditproof info``: presets and the local runtime."""

from __future__ import annotations

import json
import platform

import torch
import typer
from rich.table import Table

from ditproof.cli.common import out


def info_command(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the model presets and describe this machine's runtime."""
    from ditproof import __version__
    from ditproof.generation.runtime import _version
    from ditproof.models.registry import PRESETS

    runtime = {
        "ditproof": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "av": _version("av"),
        "cpu_arch": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cuda_version": torch.version.cuda,
    }
    if as_json:
        presets = {name: {"description": p.description, "dtype": p.default_dtype} for name, p in PRESETS.items()}
        out.print_json(json.dumps({"presets": presets, "runtime": runtime}))
        return
    table = Table(title="model presets")
    table.add_column("preset")
    table.add_column("dtype")
    table.add_column("description")
    for name, preset in PRESETS.items():
        table.add_row(name, preset.default_dtype, preset.description)
    out.print(table)
    rt = Table(title="runtime")
    rt.add_column("key")
    rt.add_column("value")
    for key, value in runtime.items():
        rt.add_row(key, str(value))
    out.print(rt)
