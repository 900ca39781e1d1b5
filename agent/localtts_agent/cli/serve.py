"""`localtts serve`: run the synthesis service (`service.app.create_app`) with uvicorn."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from .common import USAGE_EXIT, fail, plugin_settings


def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run the HTTP service: room speech, /v1/audio/speech, voices, /health, /metrics.

    One process holds one model: scale out with more processes or machines. SIGTERM stops
    accepting connections, lets open streams finish for LOCALTTS_SHUTDOWN_GRACE_S seconds,
    ends the rest and exits 0. Without a usable engine the service still starts and /health
    answers 503 saying why, unless LOCALTTS_STRICT=1 (then it exits with one line)."""
    import logging

    import uvicorn
    from livekit.plugins.localtts import EngineUnavailableError, SettingsError
    from livekit.plugins.localtts.settings import load_settings
    from livekit.plugins.localtts.tts import resolve_engine

    from ..service.app import create_app
    from ..service.server import server_config
    from ..settings import ServiceSettings

    settings = plugin_settings()
    try:
        service_settings = load_settings(ServiceSettings)
    except SettingsError as e:
        fail(str(e), code=USAGE_EXIT)
    if settings.strict:  # checked before uvicorn starts: its startup failure is a traceback
        try:
            resolve_engine(None, settings)
        except (EngineUnavailableError, ValueError) as e:
            fail(f"{e} (LOCALTTS_STRICT=1: the service does not start without its engine)")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = uvicorn.Server(
        server_config(
            create_app(settings, service_settings=service_settings),
            service_settings,
            host=host,
            port=port,
            log_level=log_level,
        )
    )
    # uvicorn raises the signal it stopped on again once it has shut down, which would end
    # the process by SIGTERM (status 143) after a clean shutdown: let that one pass
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    server.run()
