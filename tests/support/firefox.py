"""Drive a real headless Firefox as a Web Push client.

`FirefoxPushClient` starts `firefox-esr` with a profile whose `dom.push.serverURL`
points at a push service under test, opens a page served by `PageServer` (a tiny
HTTP server on 127.0.0.1), and lets the test tell that page to subscribe or
unsubscribe. The page and its service worker (tests/support/pages/) report every
result, push and error back to the page server, where the test awaits them.

    async with FirefoxPushClient("ws://127.0.0.1:8080/") as firefox:
        subscription = await firefox.subscribe(vapid_public_key_b64url)
        ...  # send a push to subscription["endpoint"]
        assert await firefox.next_push() == "hello"

The pytest fixture `firefox_client` is a factory that skips (fails in CI) when
firefox-esr is missing and always stops every Firefox it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support.ci import require

PAGES_DIR = Path(__file__).parent / "pages"
FIREFOX = "firefox-esr"
LOG_NAME = "firefox.log"

#: Where each report path lands: the page and service worker POST JSON to these.
REPORT_KINDS = (
    "ready",
    "subscription",
    "unsubscribed",
    "closing",
    "permission",
    "error",
    "push",
    "subscriptionchange",
    "call",
)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}

#: The preferences from shared/reference/firefox.md plus the ones that keep a
#: headless, offline Firefox quiet and quick. `{server_url}` is filled in.
BASE_PREFS: dict[str, Any] = {
    # Web Push against our own server, no prompts.
    "dom.push.serverURL": "{server_url}",
    "dom.push.testing.allowInsecureServerURL": True,
    "dom.push.testing.ignorePermission": True,
    "dom.push.loglevel": "Debug",
    "dom.push.maxQuotaPerSubscription": 100000,
    "permissions.default.desktop-notification": 1,
    "alerts.useSystemBackend": False,  # headless has no desktop notification daemon
    "dom.serviceWorkers.testing.enabled": True,
    "dom.serviceWorkers.idle_timeout": 60000,
    "dom.serviceWorkers.idle_extended_timeout": 60000,
    # Logs on stdout.
    "devtools.console.stdout.chrome": True,
    "devtools.console.stdout.content": True,
    # No first-run, update, telemetry or restore chatter.
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage_override.mstone": "ignore",
    "startup.homepage_welcome_url": "",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "browser.sessionstore.resume_from_crash": False,
    "browser.sessionstore.max_resumed_crashes": -1,
    "toolkit.startup.max_resumed_crashes": -1,
    "browser.tabs.warnOnClose": False,
    "browser.warnOnQuit": False,
    "dom.allow_scripts_to_close_windows": True,  # the page's window.close() quits cleanly
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.update.checkInstallTime": False,
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    # Background networking that has nowhere to go offline.
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.predictor.enabled": False,
    "network.proxy.type": 0,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.search.update": False,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.newtabpage.activity-stream.feeds.section.topstories": False,
    "browser.newtabpage.activity-stream.feeds.topsites": False,
    "browser.newtabpage.activity-stream.telemetry": False,
    "browser.ping-centre.telemetry": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.blocklist.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "media.gmp-manager.url": "",
    "media.gmp-gmpopenh264.enabled": False,
    "media.gmp-widevinecdm.enabled": False,
    "geo.provider.network.url": "",
    "identity.fxaccounts.enabled": False,
    "security.OCSP.enabled": 0,
    "security.remote_settings.crlite_filters.enabled": False,
    "security.remote_settings.intermediates.enabled": False,
}


class FirefoxError(AssertionError):
    """A Firefox-side failure or time-out; the message ends with the log tail."""


# --------------------------------------------------------------------------- page server


class PageServer:
    """Serves the test page and collects what the page and service worker report.

    A `ThreadingHTTPServer` on 127.0.0.1 in a daemon thread, so reports keep arriving
    even while a test blocks its event loop. Commands for the page are queued with
    `command()`; each is handed out once through `GET /command`.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._commands: list[dict[str, Any]] = []
        self._next_id = 1
        self.reports: dict[str, list[dict[str, Any]]] = {kind: [] for kind in REPORT_KINDS}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the page server, ending in '/'."""
        assert self._httpd is not None, "page server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def start(self) -> None:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="firefox-page-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- commands for the page

    def command(self, op: str, **fields: Any) -> int:
        """Queue a command for the page; returns its id, echoed in the page's report."""
        with self._lock:
            command_id = self._next_id
            self._next_id += 1
            self._commands.append({"id": command_id, "op": op, **fields})
            return command_id

    def take_command(self) -> dict[str, Any] | None:
        """Hand out the oldest queued command (each command goes to one page once)."""
        with self._lock:
            return self._commands.pop(0) if self._commands else None

    def drop_commands(self) -> None:
        """Forget commands not yet handed out (used when Firefox stops)."""
        with self._lock:
            self._commands.clear()

    # -- reports from the page

    def add_report(self, kind: str, body: dict[str, Any]) -> None:
        """Record one report (called from the HTTP thread)."""
        body["received_at"] = time.monotonic()
        with self._lock:
            self.reports[kind].append(body)
            self._lock.notify_all()

    def take_report(
        self, kind: str, match: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any] | None:
        """Take the oldest unread report of `kind` that `match` accepts, or None."""
        with self._lock:
            for report in self.reports[kind]:
                if not report.get("_taken") and (match is None or match(report)):
                    report["_taken"] = True
                    return report
            return None

    def errors_for(self, command_id: int | None) -> list[dict[str, Any]]:
        """Error reports for one command (or the ones with no command, for None)."""
        with self._lock:
            return [e for e in self.reports["error"] if e.get("id") == command_id]


def _make_handler(server: PageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """Static pages, `GET /command`, and `POST /report/<kind>`."""

        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Keep quiet: the page's own console log goes to the Firefox log."""

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if self.path == "/sw.js":
                self.send_header("Service-Worker-Allowed", "/")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/command":
                command = server.take_command()
                if command is None:
                    self._send(HTTPStatus.NO_CONTENT, b"", "text/plain")
                else:
                    self._send(HTTPStatus.OK, json.dumps(command).encode(), "application/json")
                return
            name = "index.html" if path == "/" else path.lstrip("/")
            file = PAGES_DIR / name
            if "/" in name or not file.is_file():
                self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
                return
            content_type = _CONTENT_TYPES.get(file.suffix, "application/octet-stream")
            self._send(HTTPStatus.OK, file.read_bytes(), content_type)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            kind = self.path.split("?", 1)[0].removeprefix("/report/")
            if not self.path.startswith("/report/") or kind not in REPORT_KINDS:
                self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"unparsed": raw.decode("utf-8", "replace")}
            server.add_report(kind, body if isinstance(body, dict) else {"value": body})
            self._send(HTTPStatus.NO_CONTENT, b"", "text/plain")

    return Handler


# --------------------------------------------------------------------------- Firefox


def _pref_line(name: str, value: Any) -> str:
    return f"user_pref({json.dumps(name)}, {json.dumps(value)});\n"


class FirefoxPushClient:
    """One headless Firefox, its profile, and the test page it has open.

    Use as an async context manager (start on enter, stop on exit) or call
    `start()` / `stop()` yourself. The profile outlives `stop()`, so `restart()`
    (or `start()` again) brings back the same user agent with its push state.
    """

    def __init__(
        self,
        push_server_url: str,
        *,
        profile_dir: Path | None = None,
        prefs: dict[str, Any] | None = None,
        page_server: PageServer | None = None,
        binary: str = FIREFOX,
        extra_args: tuple[str, ...] = (),
        start_url: str | None = None,
    ) -> None:
        self.push_server_url = push_server_url
        self._own_profile = profile_dir is None
        self.profile_dir = profile_dir
        self.prefs = dict(prefs or {})
        self.page = page_server or PageServer()
        self._own_page = page_server is None
        self.binary = binary
        self.extra_args = extra_args  # e.g. ("--marionette",) for tests that drive pages
        # A page of another origin to open instead of the test page (its service worker
        # can still report to `self.page`); e.g. the push element's /hyperty/ demo.
        self.start_url = start_url
        self.process: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None
        self._log_file: Any = None

    # -- lifecycle

    @property
    def log_path(self) -> Path:
        """The file collecting Firefox's stdout and stderr (appended across restarts)."""
        assert self.profile_dir is not None
        return self.profile_dir / LOG_NAME

    @property
    def running(self) -> bool:
        """True while the Firefox process is alive."""
        return self.process is not None and self.process.returncode is None

    def write_prefs(self) -> None:
        """Write `user.js` into the profile: the base prefs, then the test's overrides."""
        assert self.profile_dir is not None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        merged = {**BASE_PREFS, **self.prefs}
        merged["dom.push.serverURL"] = self.prefs.get("dom.push.serverURL", self.push_server_url)
        text = "".join(_pref_line(name, value) for name, value in merged.items())
        (self.profile_dir / "user.js").write_text(text)

    async def start(self) -> None:
        """Write the prefs and launch Firefox on the test page (returns once spawned)."""
        if self.running:
            raise RuntimeError("Firefox is already running")
        if self.profile_dir is None:
            import tempfile

            self.profile_dir = Path(tempfile.mkdtemp(prefix="tidings-firefox-"))
        if self._own_page and self.page._httpd is None:
            self.page.start()
        self.write_prefs()
        env = {
            **os.environ,
            "MOZ_HEADLESS": "1",
            "MOZ_CRASHREPORTER_DISABLE": "1",
            "MOZ_DISABLE_AUTO_SAFE_MODE": "1",
            "MOZ_NO_REMOTE": "1",
        }
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file.write(f"\n==== tidings: starting firefox at {time.time():.3f}\n".encode())
        self._log_file.flush()
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "--headless",
            "--no-remote",
            "--profile",
            str(self.profile_dir),
            *self.extra_args,
            self.start_url or self.page.url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stop() ends the children too
        )
        self.started_at = time.monotonic()

    async def stop(self, *, graceful: bool = True, timeout: float = 5.0) -> None:
        """Stop Firefox and keep the profile.

        Graceful (the default): the page closes its window, so Firefox quits the
        normal way, closes its push WebSocket and saves its prefs (among them the
        push uaid, which a SIGTERM can lose). Whatever is left after `timeout`, or
        everything when `graceful` is False, gets SIGTERM then SIGKILL, by process
        group, so no content process outlives the test.
        """
        process, self.process = self.process, None
        self.page.drop_commands()
        if process is not None:
            if graceful and process.returncode is None:
                self.page.command("close")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), timeout)
            await _end_process_group(process, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def kill(self) -> None:
        """Crash-stop Firefox (SIGKILL to its process group): no goodbye to the server."""
        process, self.process = self.process, None
        self.page.drop_commands()
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await _end_process_group(process, 5.0)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def restart(self, *, graceful: bool = True, timeout: float = 5.0) -> None:
        """Stop and start again with the same profile (and so the same push state)."""
        await self.stop(graceful=graceful, timeout=timeout)
        await self.start()

    async def close(self) -> None:
        """Stop Firefox and the page server this client owns; drop a temp profile."""
        await self.stop()
        if self._own_page:
            self.page.stop()
        if self._own_profile and self.profile_dir is not None:
            shutil.rmtree(self.profile_dir, ignore_errors=True)

    async def __aenter__(self) -> FirefoxPushClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- diagnostics

    def log_tail(self, lines: int = 60) -> str:
        """The last `lines` lines Firefox printed (push logs, page console)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no firefox log)"
        return "\n".join(text.splitlines()[-lines:])

    def push_log(self) -> list[str]:
        """Firefox's push-related log lines (PushService, PushServiceWebSocket, ...)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if "Push" in line]

    def _fail(self, what: str) -> FirefoxError:
        page_errors = self.page.reports["error"]
        detail = f"\npage errors: {page_errors}" if page_errors else ""
        return FirefoxError(f"{what}{detail}\n---- firefox log tail ----\n{self.log_tail()}")

    # -- waiting for reports

    async def wait_report(
        self,
        kind: str,
        timeout: float,
        *,
        command_id: int | None = None,
        what: str | None = None,
    ) -> dict[str, Any]:
        """Wait for the next report of `kind` (for `command_id`, if given).

        Fails early, with the page's error and the log tail, when the page reports
        an error for that command or Firefox exits.
        """
        match = None if command_id is None else (lambda r: r.get("id") == command_id)
        deadline = time.monotonic() + timeout
        while True:
            report = self.page.take_report(kind, match)
            if report is not None:
                return report
            if command_id is not None and (errors := self.page.errors_for(command_id)):
                raise self._fail(f"{what or kind} failed in the page: {errors[-1]['message']}")
            if not self.running:
                code = self.process.returncode if self.process else None
                raise self._fail(f"Firefox is not running (exit {code}) while waiting for {kind}")
            if time.monotonic() >= deadline:
                raise self._fail(f"no {what or kind} report within {timeout:.0f} s")
            await asyncio.sleep(0.05)

    async def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the page has registered its service worker."""
        await self.wait_report("ready", timeout, what="service worker registration")

    # -- push API

    async def subscribe(
        self,
        application_server_key: str | None,
        timeout: float = 60,
        *,
        attempt_timeout: float = 3,
    ) -> dict[str, Any]:
        """Subscribe the page's service worker; returns `PushSubscription.toJSON()`.

        `application_server_key` is the VAPID public key, base64url (None for a
        subscription without one). A subscribe attempt that hangs (it can, right
        after start-up) is retried in the page every `attempt_timeout` seconds.
        """
        command_id = self.page.command(
            "subscribe",
            key=application_server_key,
            timeout_ms=int(timeout * 1000),
            attempt_ms=int(attempt_timeout * 1000),
        )
        report = await self.wait_report(
            "subscription", timeout + 5, command_id=command_id, what="subscription"
        )
        return dict(report["subscription"])

    async def get_subscription(self, timeout: float = 30) -> dict[str, Any] | None:
        """`pushManager.getSubscription()` as JSON, or None when there is none."""
        command_id = self.page.command("get")
        report = await self.wait_report(
            "subscription", timeout, command_id=command_id, what="getSubscription"
        )
        sub = report.get("subscription")
        return dict(sub) if sub else None

    async def unsubscribe(self, timeout: float = 30) -> bool:
        """Unsubscribe the current subscription; True when one was removed."""
        command_id = self.page.command("unsubscribe")
        report = await self.wait_report(
            "unsubscribed", timeout, command_id=command_id, what="unsubscribe"
        )
        return bool(report.get("unsubscribed"))

    async def next_push_report(self, timeout: float = 30) -> dict[str, Any]:
        """The service worker's next push report: text, data (base64url), notifications."""
        return await self.wait_report("push", timeout, what="push message")

    async def next_push(self, timeout: float = 30) -> str | None:
        """The plaintext of the next push (None for a push without data)."""
        report = await self.next_push_report(timeout)
        text = report.get("text")
        return None if text is None else str(text)

    async def next_subscription_change(self, timeout: float = 30) -> dict[str, Any]:
        """The next `pushsubscriptionchange` report (old and new subscription JSON)."""
        return await self.wait_report("subscriptionchange", timeout, what="pushsubscriptionchange")

    async def no_push_within(self, seconds: float) -> None:
        """Assert that no push report arrives within `seconds`."""
        await asyncio.sleep(seconds)
        report = self.page.take_report("push")
        if report is not None:
            raise self._fail(f"unexpected push report: {report}")


async def _end_process_group(process: asyncio.subprocess.Process, timeout: float) -> None:
    """End whatever is left of the process's group: SIGTERM, wait, SIGKILL; reap it."""
    pgid = process.pid  # start_new_session=True made it the group leader
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), timeout)
    # The leader may be gone while content processes of its group linger.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    await asyncio.wait_for(process.wait(), 5.0)


# --------------------------------------------------------------------------- pytest fixture


FirefoxFactory = Callable[..., FirefoxPushClient]


@pytest.fixture
async def firefox_client(tmp_path: Path) -> AsyncIterator[FirefoxFactory]:
    """A factory for `FirefoxPushClient`s with fresh profiles in tmp_path.

    Call it like the class, without `profile_dir` (one is made per client), then
    `await client.start()` or use `async with`. Every client is closed at teardown.
    Skips outside CI (fails in CI) when firefox-esr is not installed.
    """
    require(shutil.which(FIREFOX) is not None, FIREFOX)
    clients: list[FirefoxPushClient] = []

    def make(push_server_url: str, **kwargs: Any) -> FirefoxPushClient:
        kwargs.setdefault("profile_dir", tmp_path / f"firefox-profile-{len(clients)}")
        client = FirefoxPushClient(push_server_url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        # The profile is thrown away: nothing to save, so no graceful quit (a page that
        # took over the window, like the hyperty call page, never reads the "close"
        # command, and each teardown waited its 5 s out).
        await client.stop(graceful=False)
        await client.close()
