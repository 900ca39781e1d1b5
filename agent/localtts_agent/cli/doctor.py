"""`localtts doctor`: where a newcomer goes. Host facts; which engine `auto` picks here and
why; what each other engine needs (with commands that exist); whether the data directory
and the voice database work."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import plugin_settings

if TYPE_CHECKING:
    from livekit.plugins.localtts import Settings

_DATABASE_TIMEOUT_S = 3.0


def _selection(engine: str | None, settings: Settings) -> dict[str, Any]:
    from livekit.plugins.localtts.tts import resolve_engine

    try:
        return dataclasses.asdict(resolve_engine(engine, settings))  # type: ignore[arg-type]
    except Exception as e:  # what a newcomer needs is the reason, whatever raised it
        return {"error": str(e)}


def _storage(settings: Settings) -> dict[str, Any]:
    """The voice database: DATABASE_URL reached (one connection), or the data directory the
    embedded PostgreSQL would use checked for writing (it is not started: that takes secs)."""
    from livekit.plugins.localtts.voices.connection import redact_url
    from livekit.plugins.localtts.voices.library import unwritable_dir_problem

    if settings.database_url is None:
        problem = unwritable_dir_problem(settings.data_dir)
        where = f"embedded PostgreSQL under LOCALTTS_DATA_DIR={str(settings.data_dir)!r}"
        return {"database": where, "ok": problem is None, "problem": problem}

    async def reach() -> str | None:
        import asyncpg

        try:
            connection = await asyncpg.connect(settings.database_url, timeout=_DATABASE_TIMEOUT_S)
        except Exception as e:
            return f"cannot connect to DATABASE_URL ({type(e).__name__}: {e})"
        await connection.close()
        return None

    problem = asyncio.run(reach())
    return {
        "database": redact_url(settings.database_url),
        "ok": problem is None,
        "problem": problem,
    }


def doctor(as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False) -> None:
    """What runs here: the engine `auto` picks and why, what each other engine needs, and
    whether the data directory and the voice database work. Exits 1 when the configured
    engine cannot run or the database cannot be used."""
    from livekit.plugins.localtts import HostInfo
    from livekit.plugins.localtts.engines import availability
    from livekit.plugins.localtts.models import ENGINE_NAMES

    settings = plugin_settings()
    host = HostInfo.detect()
    engines = {name: availability(name, settings) for name in ENGINE_NAMES}
    report = {
        "host": dataclasses.asdict(host),
        "engines": {name: {"usable": why is None, "why_not": why} for name, why in engines.items()},
        "auto": _selection("auto", settings),
        "selected": _selection(None, settings),
        "engine_setting": settings.engine,
        "storage": _storage(settings),
    }
    healthy = "error" not in report["selected"] and report["storage"]["ok"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print(report)
    if not healthy:
        raise typer.Exit(1)


def _print(report: dict[str, Any]) -> None:
    h = report["host"]
    typer.echo(
        f"host: {h['os']} {h['arch']}, {h['performance_cores']} performance cores, "
        f"{h['memory_gb']:.1f} GiB, CUDA: {h['cuda_device'] or 'none'}"
    )
    typer.echo("engines:")
    for name, state in report["engines"].items():
        mark = "usable" if state["usable"] else f"not usable: {state['why_not']}"
        typer.echo(f"  {name:<11} {mark}")
    auto = report["auto"]
    if "error" in auto:
        typer.echo(f"auto picks: nothing ({auto['error']})")
    else:
        typer.echo(f"auto picks: {auto['engine']} on {auto['device']}: {auto['reason']}")
    selected = report["selected"]
    if report["engine_setting"] != "auto":
        if "error" in selected:
            typer.echo(
                f"LOCALTTS_ENGINE={report['engine_setting']}: cannot run: {selected['error']}"
            )
        else:
            typer.echo(f"LOCALTTS_ENGINE={report['engine_setting']}: {selected['engine']} runs")
    for warning in selected.get("warnings", []):
        typer.echo(f"  warning: {warning}")
    storage = report["storage"]
    status = "ok" if storage["ok"] else f"NOT USABLE: {storage['problem']}"
    typer.echo(f"voices: {storage['database']}: {status}")
