"""The worker's entry: `python -m localtts_agent dev|start|connect|console`.

One loaded model per worker process serves every room that process handles
------------------------------------------------------------------------------
LiveKit Agents runs each job (room) in its own process by default. A speech model loaded in
the prewarm of each job process is then loaded once per room: N rooms cost N copies of the
weights in GPU memory and N loads and compilations, and the copies fight for one GPU. So
this worker runs jobs with `JobExecutorType.THREAD`: every room is a thread (with its own
event loop) in the worker process, and all of them use one `WorkerRuntime` holding one
loaded engine (`engines.shared_engine`). The alternative, a shared inference process
(livekit's `InferenceRunner`, used by its turn detector), would move every audio chunk of
every reply across an IPC pipe and needs a cancellation protocol of its own; the thread
executor gets the same sharing with none of that. The model does not hold the GIL while it
computes (torch and onnxruntime release it), and engines serialize model access
themselves, so rooms interleave at the engine's step boundaries. The cost: a job that
crashes the interpreter takes the worker's other rooms with it. Scale past one process by
running more workers (one per GPU) - see `load`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from livekit.agents import AgentServer, CloseEvent, JobContext, JobExecutorType, JobProcess
from livekit.agents.worker import ServerEnvOption
from livekit.plugins.localtts.log import logger
from livekit.plugins.localtts.settings import SettingsError, get_settings, load_settings

from ..settings import AgentSettings
from .runtime import WorkerRuntime
from .session import start_session
from .turns import vad_problem

# Loading a large model and compiling its decode step takes minutes on a cold cache; the
# framework's default (10 s) would kill the job executor mid-load.
PREWARM_TIMEOUT_S = 900.0


def prewarm(proc: JobProcess) -> None:
    """Runs in every job executor; the first one loads, the others find it loaded."""
    runtime = WorkerRuntime.shared()
    runtime.wait_ready(PREWARM_TIMEOUT_S)
    proc.userdata["runtime"] = runtime


async def entrypoint(ctx: JobContext) -> None:
    runtime: WorkerRuntime = ctx.proc.userdata.get("runtime") or WorkerRuntime.shared()
    await runtime.ready()
    session = runtime.new_session()

    async def _shutdown(reason: str) -> None:
        # the room is gone or the worker drains: stop speaking, free the engine
        logger.info("room %s closing (%s)", ctx.room.name, reason)
        await session.aclose()

    @session.on("close")
    def _closed(ev: CloseEvent) -> None:
        # the participant left (or the session failed): end the job. livekit would keep it,
        # the agent alone in the room, until the server closes the room (20 s later by
        # default), and the room would count against LOCALTTS_AGENT_MAX_SESSIONS all along
        ctx.shutdown(reason=f"agent session closed ({ev.reason})")

    ctx.add_shutdown_callback(_shutdown)
    await start_session(session, runtime, room=ctx.room)


def http_port(settings: AgentSettings) -> int | ServerEnvOption[int]:
    """The health endpoint's port: livekit's defaults (8081 for `start`, any free port for
    `dev`) unless LOCALTTS_AGENT_HTTP_PORT says otherwise - a second worker on the host
    (one per GPU) would otherwise fail to bind 8081."""
    if settings.agent_http_port is not None:
        return settings.agent_http_port
    return ServerEnvOption(dev_default=0, prod_default=8081)


def build_server() -> AgentServer:
    runtime = WorkerRuntime.shared()
    settings = runtime.agent_settings
    server = AgentServer(
        job_executor_type=JobExecutorType.THREAD,  # one model per process: see the docstring
        setup_fnc=prewarm,
        load_fnc=runtime.load,
        # load is 1.0 at LOCALTTS_AGENT_MAX_SESSIONS rooms: take rooms until then
        load_threshold=ServerEnvOption(dev_default=float("inf"), prod_default=1.0),
        num_idle_processes=ServerEnvOption(dev_default=1, prod_default=settings.agent_max_sessions),
        initialize_process_timeout=PREWARM_TIMEOUT_S,
        host=settings.agent_http_host,
        port=http_port(settings),
    )
    server.rtc_session(entrypoint)

    @server.on("worker_started")
    def _load_now(*_: Any) -> None:
        runtime.start()  # load while LiveKit registers us, before the first room

    return server


# the commands that connect to a LiveKit server; console, download-files and --help do not
_SERVER_COMMANDS = frozenset({"start", "dev", "connect"})
# what each needs: the environment variable, or the command-line option livekit also takes
_SERVER_SETTINGS = (
    ("LIVEKIT_URL", "--url"),
    ("LIVEKIT_API_KEY", "--api-key"),
    ("LIVEKIT_API_SECRET", "--api-secret"),
)


def missing_server_settings(argv: list[str], environ: Mapping[str, str]) -> list[str]:
    """The LIVEKIT_* variables `argv` (without the program name) needs but lacks.

    Without them livekit-agents logs a traceback ("ws_url is required") and exits 0, which
    a supervisor reads as a clean stop: check before anything loads.
    """
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command not in _SERVER_COMMANDS or {"--help", "-h"} & set(argv):
        return []
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    return [
        variable
        for variable, option in _SERVER_SETTINGS
        if not environ.get(variable) and option not in given
    ]


# how the worker is started, for its messages
PROGRAM = "python -m localtts_agent"
# livekit-agents 1.8.9 gives these commands no help text; what `--help` says of them here
_COMMAND_HELP = {
    "start": "Run the worker for production: register with the LiveKit server (LIVEKIT_URL, "
    "LIVEKIT_API_KEY, LIVEKIT_API_SECRET) and join the rooms it is dispatched to.",
    "connect": "Join one room now (--room), without waiting for a dispatch: for trying the "
    "agent in a room of your own.",
    "download-files": "Fetch ahead of time the files the loaded plugins need (e.g. Silero's "
    "VAD model; localtts needs none).",
}


def console_problem(argv: list[str]) -> str | None:
    """Why `console` cannot run here (its audio needs PortAudio), before anything loads:
    livekit-agents would fail with a traceback from deep inside sounddevice."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command != "console" or {"--text", "--help", "-h"} & set(argv):
        return None
    try:
        import sounddevice  # noqa: F401
    except OSError as e:
        return (
            f"console needs the PortAudio library for the microphone and speaker ({e}): "
            "install it (Debian/Ubuntu: apt install libportaudio2; macOS: brew install "
            f"portaudio), or type instead: `{PROGRAM} console --text`"
        )
    return None


def main() -> None:
    if missing := missing_server_settings(sys.argv[1:], os.environ):
        sys.exit(
            f"{PROGRAM}: {', '.join(missing)} not set. Set LIVEKIT_URL, LIVEKIT_API_KEY "
            "and LIVEKIT_API_SECRET (the LiveKit server to register with) in the environment, "
            f"or pass --url/--api-key/--api-secret; `{PROGRAM} console` needs none"
        )
    try:
        settings = load_settings(AgentSettings)
        get_settings()  # the plugin's (LOCALTTS_ENGINE...): read in every room, checked now
    except SettingsError as e:
        sys.exit(f"{PROGRAM}: {e}")
    if (problem := vad_problem(settings)) is not None:
        sys.exit(f"{PROGRAM}: {problem}")  # now, not in the first room
    if (problem := console_problem(sys.argv[1:])) is not None:
        sys.exit(f"{PROGRAM}: {problem}")
    if settings.vad == "silero":
        # on the main thread: a plugin registers itself when first imported, livekit refuses
        # that on any other thread, and build_vad runs in job threads
        from livekit.plugins import silero  # noqa: F401
    # livekit-agents' own CLI (what `cli.run_app` runs), with help for every command; a
    # private function of the pinned 1.8.9 (its public run_app offers no way to add help)
    from livekit.agents.cli import _legacy

    app = _legacy._build_cli(build_server())
    for command in app.registered_commands:
        name = command.name or getattr(command.callback, "__name__", "").replace("_", "-")
        if not (command.help or getattr(command.callback, "__doc__", None)):
            command.help = _COMMAND_HELP.get(name)
    app()
