"""``ditproof price``: quote a request, calibrate coefficients, import a calibration, move the price.

``ditproof price [--width ...]`` quotes; ``ditproof price calibrate`` times forward passes on
this machine and writes coefficients; ``ditproof price import`` merges the entry of a
``tools/pricing_calibrate.py`` result into a coefficients file; ``ditproof price next`` applies
Gonka's per-block price update to a sequence of utilizations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from ditproof.cli.common import call, check_output_file, err, out, reported
from ditproof.errors import InvalidInputError
from ditproof.models.quiet import quiet_libraries

if TYPE_CHECKING:
    from ditproof.protocol.pricing import PriceQuote

price_app = typer.Typer(
    help="Price a request from its latent patch count (docs/pricing.md); calibrate and manage the coefficients.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _quote_table(quote: PriceQuote) -> Table:
    table = Table(title=f"price of {quote.width}x{quote.height}x{quote.num_frames}, {quote.num_inference_steps} steps")
    table.add_column("item")
    table.add_column("value", justify="right")
    rows = [
        ("model", quote.model),
        ("gpu", f"{quote.gpu} ({quote.coefficients_status} coefficients)"),
        ("latent patches N", f"{quote.patches:,}"),
        ("CFG", "on (2 passes per step)" if quote.cfg else "off (1 pass per step)"),
        *[
            (f"{e.expert} steps / passes", f"{e.steps} / {e.passes} × {e.units_per_pass:,.2f} units")
            for e in quote.experts
        ],
        ("forward passes", str(quote.forward_passes)),
        ("units", f"{quote.units:,} (exact {quote.exact_units:,.3f})"),
        ("predicted transformer time", f"{quote.seconds:,.1f} s"),
        ("price per unit", f"{quote.price_per_unit:,} ngonka"),
        ("cost", f"{quote.cost:,} ngonka"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


@price_app.callback(invoke_without_command=True)
def price_command(
    ctx: typer.Context,
    width: int | None = typer.Option(None, help="Width in pixels, a multiple of 16 (default: the model's own, below)."),
    height: int | None = typer.Option(None, help="Height in pixels, a multiple of 16 (default: the model's own)."),
    num_frames: int | None = typer.Option(None, "--num-frames", help="Frames, 4k+1 (default: the model's own)."),
    steps: int | None = typer.Option(None, help="Denoising steps (default: the model's own)."),
    no_cfg: bool = typer.Option(False, "--no-cfg", help="Without classifier-free guidance (1 pass per step)."),
    boundary_ratio: float = typer.Option(0.875, help="Expert switch boundary, as in the request."),
    flow_shift: float = typer.Option(12.0, help="Flow shift, as in the request."),
    model: str = typer.Option(
        "wan2.2-t2v-a14b",
        help="Model with coefficients: wan2.2-t2v-a14b (the network's model, 832x480x81, 40 steps, H100) or "
        "wan-shapes-small (the shipped default model of `generate`, 128x128x17, 20 steps, CPU).",
    ),
    gpu: str | None = typer.Option(None, help="GPU of the coefficients (a part of its name is enough)."),
    price_per_unit: int = typer.Option(100, help="Price of one unit in ngonka (Gonka's base price: 100)."),
    coefficients: Path | None = typer.Option(None, help="Coefficients file (default: the packaged one)."),
    as_json: bool = typer.Option(False, "--json", help="Print the quote as JSON."),
) -> None:
    """Quote a request: latent patches, forward passes, units, predicted seconds and cost."""
    if ctx.invoked_subcommand is not None:
        return
    with reported():
        from ditproof.models.presets import native_sizes
        from ditproof.pricing.coefficients import load_coefficients
        from ditproof.pricing.cost import quote, size_request

        size = native_sizes(
            model, {"width": width, "height": height, "num_frames": num_frames, "num_inference_steps": steps}
        )
        request = size_request(
            size["width"],
            size["height"],
            size["num_frames"],
            size["num_inference_steps"],
            not no_cfg,
            boundary_ratio,
            flow_shift,
        )
        data = load_coefficients(coefficients)
        result = quote(request, model=model, gpu=gpu, price_per_unit=price_per_unit, coefficients=data)
        if as_json:
            out.print_json(result.model_dump_json())
            return
        out.print(_quote_table(result))
        if result.coefficients_status == "provisional":
            err.print(
                "note: provisional coefficients (fitted to H100 forward times, not calibrated); see docs/pricing.md",
                highlight=False,
            )


@price_app.command("calibrate")
def calibrate_command(
    out_path: Path = typer.Option(..., "--out", help="Coefficients file to write (the entry is merged in)."),
    model: str = typer.Option("wan-tiny-random", help="Model preset whose experts are timed."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    dtype: str | None = typer.Option(None, help="Default: bfloat16 on a GPU, float32 on the CPU."),
    sizes: str | None = typer.Option(None, help="Comma-separated WxHxF sizes (default: the preset's sweep)."),
    layers: int | None = typer.Option(None, help="Time this many blocks and scale to all (default: all)."),
    warmup: int = typer.Option(1, min=0, max=100, help="Untimed passes per size."),
    repeats: int = typer.Option(3, min=1, max=1000, help="Timed passes per size (median kept)."),
    attention_backend: str = typer.Option("sdpa", help="Attention kernel, as for generate."),
    max_patches: int | None = typer.Option(None, help="Largest N to price (default: the largest timed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the entry as JSON."),
) -> None:
    """Time forward passes over a sweep of sizes on this machine, fit, and write the coefficients."""
    quiet_libraries()
    with reported():
        from ditproof.pricing.calibrate import calibrate
        from ditproof.pricing.coefficients import write_entry
        from ditproof.protocol.options import RuntimeOptions

        # The output path, device and kernel names are checked before any model is built.
        check_output_file(out_path, "--out")
        call(RuntimeOptions, device=device, attention_backend=attention_backend)

        def progress(expert: str, size: str, patches: int, seconds: float) -> None:
            err.print(f"{expert} {size:>12} N={patches:>7,} {seconds * 1000:10.2f} ms", highlight=False)

        entry = calibrate(
            model,
            device=device,
            dtype=dtype,
            sizes=[s.strip() for s in sizes.split(",")] if sizes else None,
            layers=layers,
            warmup=warmup,
            repeats=repeats,
            attention_backend=attention_backend,
            max_patches=max_patches,
            provenance=f"ditproof price calibrate --model {model} --device {device}",
            on_point=progress,
        )
        write_entry(out_path, entry)
        if as_json:
            out.print_json(entry.model_dump_json())
            return
        table = Table(title=f"{model} on {entry.gpu}")
        columns = ("expert", "alpha (s/N²)", "beta (s/N)", "gamma (s)", "floor (s)", "worst error", "3-term", "2-term")
        for column in columns:
            table.add_column(column)
        for name, fit in entry.experts.items():
            c = fit.cost
            table.add_row(
                f"{name} (timed as {fit.timed_as})",
                f"{c.alpha:.4g}",
                f"{c.beta:.4g}",
                f"{c.gamma:.4g}",
                f"{c.floor:.4g}",
                f"{fit.fit.max_rel_error:.1%} at N={fit.fit.worst_patches:,}",
                f"{fit.three_term_fit.max_rel_error:.1%} at N={fit.three_term_fit.worst_patches:,}",
                f"{fit.two_term_fit.max_rel_error:.1%} at N={fit.two_term_fit.worst_patches:,}",
            )
        out.print(table)
        if entry.method.scaling != "none":
            out.print(f"timed {entry.method.layers_timed} of {entry.method.layers_total} layers and scaled linearly")
        out.print(f"wrote {out_path}")


@price_app.command("import")
def import_command(
    result: Path = typer.Argument(..., help="A tools/pricing_calibrate.py result (or an entry) JSON file."),
    into: Path | None = typer.Option(None, help="Coefficients file to merge into (default: the packaged one)."),
) -> None:
    """Merge a calibration entry into a coefficients file (replacing the same model and GPU)."""
    with reported():
        from pydantic import ValidationError

        from ditproof.pricing.coefficients import PACKAGED_COEFFICIENTS, write_entry
        from ditproof.protocol.pricing import CoefficientEntry

        check_output_file(into, "--into")
        try:
            data = json.loads(result.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"result: cannot read {result} as JSON ({exc})") from None
        raw = data.get("entry", data) if isinstance(data, dict) else data
        try:
            entry = CoefficientEntry.model_validate(raw)
        except ValidationError as exc:
            raise InvalidInputError(
                f"result: {result} holds no valid coefficient entry ({exc.error_count()} problems)"
            ) from None
        target = into or PACKAGED_COEFFICIENTS
        write_entry(target, entry)
        out.print(f"merged {entry.status} coefficients for {', '.join(entry.models)} on {entry.gpu} into {target}")


@price_app.command("next")
def next_command(
    price: int = typer.Option(100, help="Current price per unit (ngonka)."),
    utilization: str = typer.Option(..., help="Comma-separated utilizations, one per block (e.g. 0.8,0.8,0.3)."),
) -> None:
    """Apply Gonka's per-block price update (stability zone 0.40–0.60, elasticity 0.05, floor 1)."""
    with reported():
        from ditproof.pricing.dynamic import adjustment_factor, next_price

        values = [part.strip() for part in utilization.split(",") if part.strip()]
        if not values:
            raise InvalidInputError(f"utilization: got {utilization!r}; allowed: comma-separated numbers ≥ 0")
        table = Table(title="price per unit, block by block")
        for column in ("block", "utilization", "factor", "price"):
            table.add_column(column, justify="right")
        for block, value in enumerate(values, start=1):
            factor = adjustment_factor(value)
            price = next_price(price, value)
            table.add_row(str(block), value, f"{factor}", f"{price:,}")
        out.print(table)
