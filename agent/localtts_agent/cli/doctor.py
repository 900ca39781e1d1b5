"""`localtts doctor`: host facts and which engines can run here."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

import typer


def doctor(as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False) -> None:
    """Host facts and, per engine, whether it can run here and why not."""
    from livekit.plugins.localtts import HostInfo, get_settings
    from livekit.plugins.localtts.engines import availability
    from livekit.plugins.localtts.models import ENGINE_NAMES
    from livekit.plugins.localtts.tts import resolve_engine

    settings = get_settings()
    host = HostInfo.detect()
    engines = {name: availability(name, settings) for name in ENGINE_NAMES}
    try:
        selection: dict[str, Any] = dataclasses.asdict(resolve_engine(settings.engine, settings))
    except Exception as e:
        selection = {"error": str(e)}
    report = {
        "host": dataclasses.asdict(host),
        "engines": {name: {"usable": why is None, "why_not": why} for name, why in engines.items()},
        "selected": selection,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    h = report["host"]
    typer.echo(
        f"host: {h['os']} {h['arch']}, {h['performance_cores']} performance cores, "
        f"{h['memory_gb']:.1f} GiB, CUDA: {h['cuda_device'] or 'none'}"
    )
    for name, state in report["engines"].items():
        mark = "usable" if state["usable"] else f"not usable: {state['why_not']}"
        typer.echo(f"  {name:<11} {mark}")
    if "error" in selection:
        typer.echo(f"selected: none ({selection['error']})")
    else:
        typer.echo(
            f"selected: {selection['engine']} on {selection['device']} "
            f"({selection['dtype']}): {selection['reason']}"
        )
        for warning in selection["warnings"]:
            typer.echo(f"  warning: {warning}")

