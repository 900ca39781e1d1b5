"""`localtts serve`: run the synthesis service (`service.app.create_app`) with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run the HTTP service: room speech, /v1/audio/speech, voices, /health, /metrics.

    One process holds one model: scale out with more processes or machines."""
    import logging

    import uvicorn

    from ..service.app import create_app

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # one worker: a second uvicorn worker would load a second copy of the model
    uvicorn.run(create_app(), host=host, port=port, log_level=log_level, workers=1)
