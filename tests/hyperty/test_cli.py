"""The command line as separate processes: push element, runtime init, agent, call."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.ci import free_port
from support.service import ServiceProcess
from tidings.webpush import VapidKey

TIDINGS = [sys.executable, "-m", "tidings"]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in reversed(started):
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_health(url: str, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the process exited"
        try:
            if httpx.get(url + "/health", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(TIDINGS + args, capture_output=True, text=True, timeout=timeout)


def test_a_call_between_command_line_runtimes(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    service = ServiceProcess(tmp_path / "service")
    service.start()
    try:
        key = tmp_path / "vapid.pem"
        key.write_bytes(VapidKey.generate().to_pem())
        port = free_port()
        log = (tmp_path / "element.log").open("wb")
        element = subprocess.Popen(
            [
                *TIDINGS,
                "hyperty",
                "push-element",
                "--domain",
                "example.com",
                "--key",
                str(key),
                "--port",
                str(port),
                "--db",
                str(tmp_path / "element.db"),
                "--push-origin",
                service.url,
            ],
            stdout=log,
            stderr=log,
        )
        processes.append(element)
        element_url = f"http://127.0.0.1:{port}"
        wait_health(element_url, element)

        bob = tmp_path / "bob"
        init = run(
            [
                "hyperty",
                "runtime",
                "init",
                "--state",
                str(bob),
                "--domain",
                "example.com",
                "--element",
                element_url + "/hyperty",
                "--service",
                service.ws_url,
                "--asleep",
                "--answer",
                "decline",
            ]
        )
        assert init.returncode == 0, init.stderr
        created = json.loads(init.stdout)
        assert created["runtime"].startswith("hyperty-runtime://example.com/")
        assert created["hyperty"].startswith("hyperty://example.com/") and created["asleep"]

        agent = subprocess.Popen(
            [*TIDINGS, "agent", "--service", service.ws_url, "--state", str(bob)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(agent)

        call = run(
            [
                "hyperty",
                "call",
                "--state",
                str(tmp_path / "alice"),
                "--domain",
                "example.com",
                "--element",
                element_url + "/hyperty",
                "--timeout",
                "20",
                created["hyperty"],
            ]
        )
        assert call.returncode == 0, call.stderr
        answer = json.loads(call.stdout)
        assert answer["type"] == "response" and answer["from"] == created["hyperty"]
        assert answer["body"] == {"code": 486, "description": "Busy Here"}

        events = [json.loads(line) for line in (bob / "events.jsonl").read_text().splitlines()]
        kinds = [e["event"] for e in events]
        assert kinds[:2] == ["hyperty-created", "registered"]
        assert {"runtime-started", "woken", "ring", "declined"} <= set(kinds)

        bad = run(["hyperty", "call", "--state", str(tmp_path / "nobody"), "hyperty://x.org/y"])
        assert bad.returncode != 0 and "give a runtime URL or a domain" in bad.stderr
    finally:
        service.stop()


def test_push_element_flags_are_checked(tmp_path: Path) -> None:
    key = tmp_path / "vapid.pem"
    key.write_bytes(VapidKey.generate().to_pem())
    base = ["hyperty", "push-element", "--domain", "example.com", "--key", str(key)]
    alone = run([*base, "--idp-issuer", "https://idp.example.com"])
    assert alone.returncode != 0 and "--idp-issuer and --idp-jwks go together" in alone.stderr
    bad = run([*base, "--rate-messages", "lots"])
    assert bad.returncode != 0 and "bad rate limit 'lots'" in bad.stderr
    missing = run([*base, "--idp-issuer", "https://i", "--idp-jwks", str(tmp_path / "no.json")])
    assert missing.returncode != 0 and "keys cannot be loaded" in missing.stderr
