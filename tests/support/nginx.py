"""Run Debian's nginx in front of a test service with the project's own site file.

`NginxProxy` takes `deploy/nginx/tidings.conf` as shipped and swaps only the lines
marked `# replace` (ports, name, certificate paths) for the test's, so a passing test
proves the file operators install. It runs nginx in the foreground with every path
(pid, logs, temporary files) under the test's directory.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from support.ci import require

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "deploy" / "nginx" / "tidings.conf"


def nginx_binary() -> str:
    """The nginx executable; skips outside CI (fails in CI) when nginx is missing."""
    # Debian installs it in /usr/sbin, which a non-root PATH may lack.
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    require(found is not None, "nginx (Debian package nginx)")
    assert found is not None
    return found


def render_site(
    *,
    upstream_port: int,
    https_port: int,
    http_port: int,
    server_name: str,
    certificate: Path,
    key: Path,
) -> str:
    """The shipped site file with its `# replace` lines set for a test on loopback."""
    text = SITE.read_text()
    swaps = [
        (r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{upstream_port};"),
        (r"listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        (r"listen \[::\]:443 ssl http2;", f"listen [::1]:{https_port} ssl http2;"),
        (r"listen 80;", f"listen 127.0.0.1:{http_port};"),
        (r"listen \[::\]:80;", f"listen [::1]:{http_port};"),
        (r"server_name push\.example\.com;", f"server_name {server_name};"),
        (r"ssl_certificate +\S+;", f"ssl_certificate {certificate};"),
        (r"ssl_certificate_key +\S+;", f"ssl_certificate_key {key};"),
    ]
    for pattern, replacement in swaps:
        text, count = re.subn(pattern, replacement, text)
        assert count >= 1, f"deploy/nginx/tidings.conf no longer has {pattern!r}"
    return text


class NginxProxy:
    """nginx serving the rendered site from `directory` until `stop()`."""

    def __init__(self, directory: Path, site: str) -> None:
        self.directory = directory
        self.site = site
        self.process: subprocess.Popen[bytes] | None = None

    def _main_config(self) -> str:
        prefix = self.directory
        temp = {
            name: prefix / "temp" / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")
        }
        for path in temp.values():
            path.mkdir(parents=True, exist_ok=True)
        # As root nginx would hand its workers to `nobody`, who cannot read the test's
        # files; keep them as the user running the test.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return (
            f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} info;\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            f"  client_body_temp_path {temp['body']};\n"
            f"  proxy_temp_path {temp['proxy']};\n"
            f"  fastcgi_temp_path {temp['fastcgi']};\n"
            f"  uwsgi_temp_path {temp['uwsgi']};\n"
            f"  scgi_temp_path {temp['scgi']};\n"
            f"  include {prefix / 'tidings.conf'};\n"
            "}\n"
        )

    def start(self, wait_for_port: int, timeout: float = 20) -> None:
        binary = nginx_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "tidings.conf").write_text(self.site)
        config = self.directory / "nginx.conf"
        config.write_text(self._main_config())
        check = subprocess.run(
            [binary, "-t", "-p", str(self.directory), "-c", str(config)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, f"nginx -t refused the site:\n{check.stderr}"
        self.process = subprocess.Popen(
            [binary, "-p", str(self.directory), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"nginx exited:\n{self.error_log()}"
            try:
                with socket.create_connection(("127.0.0.1", wait_for_port), timeout=1):
                    return
            except OSError:
                assert time.monotonic() < deadline, f"nginx did not listen:\n{self.error_log()}"
                time.sleep(0.05)

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
