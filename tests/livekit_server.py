"""A real `livekit-server --dev` for the tests, on 127.0.0.1 only (pytest plugin).

`tests/livekit-server.sh` builds the pinned server into `.venv/bin/livekit-server`; the
`livekit_server` fixture starts it once per test session on free ports and stops it at the
end. Every packet stays on the loopback interface: the server binds 127.0.0.1, advertises
only 127.0.0.1 as its ICE candidate (UDP; ICE over TCP is off) and names a STUN server on
127.0.0.1 instead of its default public ones.

Without the binary the tests that need it skip, saying how to get it; where Go is installed
(so the build script would have built it) they fail instead, so CI cannot skip them quietly.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

_BUILD_HINT = "run `bash tests/livekit-server.sh` (builds livekit-server v1.13.5 with Go)"
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LiveKitServer:
    url: str  # ws://127.0.0.1:<port>
    api_key: str
    api_secret: str
    log_path: Path

    def token(
        self,
        identity: str,
        room: str,
        *,
        can_publish: bool = True,
        can_subscribe: bool = True,
        ttl: timedelta = timedelta(minutes=30),
        agent_name: str | None = None,
    ) -> str:
        """A join token for `room` (what a browser or a phone app would be given).

        With `agent_name`, a room this join creates gets that agent (explicit dispatch)
        instead of every automatically dispatched one.
        """
        from livekit import api

        grants = api.VideoGrants(
            room_join=True, room=room, can_publish=can_publish, can_subscribe=can_subscribe
        )
        token = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_grants(grants)
            .with_ttl(ttl)
        )
        if agent_name is not None:
            dispatch = api.RoomAgentDispatch(agent_name=agent_name)
            token = token.with_room_config(api.RoomConfiguration(agents=[dispatch]))
        return token.to_jwt()

    def env(self) -> dict[str, str]:
        """The LIVEKIT_* variables a worker or the service reads."""
        return {
            "LIVEKIT_URL": self.url,
            "LIVEKIT_API_KEY": self.api_key,
            "LIVEKIT_API_SECRET": self.api_secret,
        }

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def server_binary() -> Path | None:
    """The livekit-server to run: $LIVEKIT_SERVER_BIN, the venv's, or one on PATH."""
    if explicit := os.environ.get("LIVEKIT_SERVER_BIN"):
        return Path(explicit)
    beside_python = Path(sys.executable).parent / "livekit-server"
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("livekit-server")
    return Path(on_path) if on_path else None


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_config(*, port: int, udp_port: int, api_key: str, api_secret: str) -> str:
    """YAML for `--config-body`: loopback only, no public STUN, no ICE over TCP."""
    return f"""
port: {port}
bind_addresses: [127.0.0.1]
keys:
  {api_key}: {api_secret}
rtc:
  tcp_port: 0
  udp_port: {udp_port}
  use_external_ip: false
  node_ip: 127.0.0.1
  enable_loopback_candidate: true
  interfaces:
    includes: [lo]
  stun_servers: ["127.0.0.1:3478"]
logging:
  level: info
"""


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"livekit-server exited with {process.returncode}:\n{log_path.read_text()}"
            )
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"livekit-server did not answer within {_START_TIMEOUT_S} s")


@contextlib.contextmanager
def run_livekit_server(binary: Path, log_dir: Path) -> Iterator[LiveKitServer]:
    """Start `binary --dev` on free loopback ports; stop it on exit."""
    port, udp_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    # a long secret: PyJWT warns about HMAC keys under 32 bytes (the dev default is "secret")
    api_key, api_secret = "devkey", secrets.token_urlsafe(32)
    config = server_config(port=port, udp_port=udp_port, api_key=api_key, api_secret=api_secret)
    log_path = log_dir / "livekit-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "--dev", "--config-body", config],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/", process, log_path)
        yield LiveKitServer(
            url=f"ws://127.0.0.1:{port}",
            api_key=api_key,
            api_secret=api_secret,
            log_path=log_path,
        )
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    binary = server_binary()
    if binary is None:
        if shutil.which("go"):
            pytest.fail(f"livekit-server is missing although Go is installed: {_BUILD_HINT}")
        pytest.skip(f"needs livekit-server: install Go, then {_BUILD_HINT}")
    with run_livekit_server(binary, tmp_path_factory.mktemp("livekit")) as server:
        yield server
