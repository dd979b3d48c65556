"""A pytest plugin that points Mozilla's autopush integration suite at Tidings.

Loaded by run_autopush_suite.py into the suite's own pytest (`-p autopush_plugin`); it
changes only the start-up, through the suite's own switches for "use an existing
server" (AUTOPUSH_CN_SERVER, AUTOPUSH_EP_SERVER, AUTOPUSH_MP_SERVER) and DB_DSN (no
BigTable emulator), and starts, once the suite's module is imported:

- Tidings for autoconnect + autoendpoint: one process on the endpoint port, whose
  public URL is the endpoint URL the suite signs VAPID tokens for, plus a TCP relay
  from the connection port (Tidings serves WebSocket and HTTP on one port); its stored
  message limit is the suite's `msg_limit`;
- Tidings for the Megaphone node: `--megaphone-url` on the suite's mock Megaphone,
  polled every `megaphone_poll_interval` seconds.

Nothing of the suite is copied or changed; its assertions run as they are.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

SUITE_MODULE = "test_integration_all_rust"
_PROCESSES: list[subprocess.Popen[bytes]] = []
_RELAY_LOOP: asyncio.AbstractEventLoop | None = None


def pytest_configure(config: Any) -> None:
    os.environ.setdefault("DB_DSN", "tidings://external")  # not grpc: no BigTable
    os.environ["AUTOPUSH_CN_SERVER"] = "http://127.0.0.1:9150"
    os.environ["AUTOPUSH_EP_SERVER"] = "http://127.0.0.1:9160"
    os.environ["AUTOPUSH_MP_SERVER"] = "http://127.0.0.1:9052"


def _suite() -> ModuleType:
    for name, module in sys.modules.items():
        if name.endswith(SUITE_MODULE):
            return module
    raise RuntimeError(f"the suite module {SUITE_MODULE} was not imported")


def _serve(name: str, port: int, data: Path, *args: str) -> None:
    python = os.environ.get("TIDINGS_PYTHON", "python3")
    folder = data / name
    folder.mkdir(parents=True, exist_ok=True)
    command = [python, "-m", "tidings", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--db", str(folder / "tidings.db"), "--log-level", "warning", *args]
    log = (folder / "service.log").open("ab")
    _PROCESSES.append(subprocess.Popen(command, stdout=log, stderr=log))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _PROCESSES[-1].poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"Tidings ({name}) did not start: see {folder / 'service.log'}")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _relay(listen_port: int, target_port: int) -> None:
    """Forward 127.0.0.1:listen_port to 127.0.0.1:target_port, in a thread."""
    global _RELAY_LOOP
    loop = asyncio.new_event_loop()
    _RELAY_LOOP = loop

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(asyncio.start_server(client, "127.0.0.1", listen_port))
        started.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    started.wait(10)


def pytest_collection_finish(session: Any) -> None:
    suite = _suite()
    data = Path(tempfile.mkdtemp(prefix="tidings-autopush-"))
    endpoint = f"http://127.0.0.1:{suite.ENDPOINT_PORT}"
    _serve(
        "connection",
        suite.ENDPOINT_PORT,
        data,
        "--public-url",
        endpoint,
        "--max-messages",
        str(suite.MSG_LIMIT),
    )
    _relay(suite.CONNECTION_PORT, suite.ENDPOINT_PORT)
    megaphone = suite.MEGAPHONE_CONFIG
    _serve(
        "megaphone",
        suite.MP_CONNECTION_PORT,
        data,
        "--megaphone-url",
        str(megaphone["megaphone_api_url"]),
        "--megaphone-poll",
        str(megaphone["megaphone_poll_interval"]),
    )
    sys.stderr.write(f"\nTidings under test: logs in {data}\n")


def pytest_unconfigure(config: Any) -> None:
    for process in _PROCESSES:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
    if _RELAY_LOOP is not None:
        _RELAY_LOOP.call_soon_threadsafe(_RELAY_LOOP.stop)
