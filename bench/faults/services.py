"""The processes of the campaign, each in its host: PostgreSQL (primary and a synchronous
streaming replica), Redis and Tidings nodes. Each can be killed, paused and restarted."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from topology import Host, Network, sh

PG_BIN = (
    Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
    if glob.glob("/usr/lib/postgresql/*/bin")
    else Path("/usr/lib/postgresql/bin")
)
REPO = Path(__file__).resolve().parents[2]


def wait_port(
    address: str, port: int, timeout: float, what: str, alive: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"{what} exited with {alive.returncode}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {address}:{port}") from None
            time.sleep(0.1)


class Process:
    """A long-running process in a host, with its log file."""

    def __init__(
        self,
        name: str,
        host: Host,
        command: list[str],
        log: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.command = command
        self.log = log
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.host.run(*self.command),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        self.paused = False

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, number: int) -> None:
        if self.alive:
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, number)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()
        self.paused = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.paused:
            self.resume()
        self.signal(signal.SIGTERM)
        if self.popen is not None:
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


DATA_DISK = "256m"  # each data directory's own filesystem: small enough to fill at once
FILLER = "disk-full.filler"


class Postgres:
    """A primary and a replica that acknowledges every commit before the primary does.

    Each data directory is a tmpfs of its own (`DATA_DISK`), so a full disk is a fault on
    one server that leaves the machine's disk alone; `stop` unmounts them."""

    def __init__(self, network: Network, base: Path) -> None:
        self.network = network
        self.base = base
        self.primary_dir = base / "pg-primary"
        self.replica_dir = base / "pg-replica"
        self.primary: Process | None = None
        self.replica: Process | None = None
        self.failed_over = False
        self.filler: Path | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"{self.network[h].address}:5432" for h in ("pg", "pg2"))
        return f"postgresql://postgres@{hosts}/tidings?target_session_attrs=read-write&timeout=3"

    def _mount(self, data: Path) -> None:
        data.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(data):
            sh("mount", "-t", "tmpfs", "-o", f"size={DATA_DISK},mode=0700", "tmpfs", str(data))
        shutil.chown(data, "postgres", "postgres")

    def _unmount(self) -> None:
        for data in (self.primary_dir, self.replica_dir):
            if os.path.ismount(data):
                # Lazy: a process still holding a file there must not leave the mount behind.
                sh("umount", "--lazy", str(data), check=False)

    @property
    def current_dir(self) -> Path:
        return self.replica_dir if self.failed_over else self.primary_dir

    def fill_disk(self, switch_wal: bool) -> None:
        """Take every free byte of the current primary's data directory's filesystem; with
        `switch_wal`, make it start a WAL segment then, which it cannot create: PostgreSQL
        PANICs, and its crash recovery, on the same full disk, stops the postmaster."""
        data = self.current_dir
        free = os.statvfs(data)
        filler = self.filler = data / FILLER
        sh("fallocate", "-l", str(free.f_bavail * free.f_frsize), str(filler), check=False)
        # fallocate may fall short by the blocks its own metadata needs: dd the rest.
        sh("dd", "if=/dev/zero", f"of={filler}", "bs=64k", "oflag=append", "conv=notrunc",
           check=False)  # fmt: skip
        if switch_wal:
            host = self.network["pg2" if self.failed_over else "pg"]
            sh(*host.run(
                str(PG_BIN / "psql"), f"host={host.address} user=postgres dbname=postgres "
                "connect_timeout=3", "-c", "SELECT pg_switch_wal()",
            ), check=False)  # fmt: skip

    def free_disk(self) -> None:
        """Remove the filler, and start the server again if the full disk killed it (a
        PANIC on a WAL write may take the postmaster down)."""
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)
            self.filler = None
        self.restart_if_dead()

    def restart_if_dead(self, timeout: float = 30) -> None:
        """Wait until the current primary accepts connections, starting it again if it
        exits meanwhile (a postmaster whose crash recovery failed shuts down)."""
        server = self.current
        if server is None:
            return
        host = self.network["pg2" if self.failed_over else "pg"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not server.alive:
                print(f"{server.name} had stopped: started again", flush=True)
                server.start()
            ready = sh(*host.run(str(PG_BIN / "pg_isready"), "-h", host.address, "-t", "1"),
                       check=False)  # fmt: skip
            if ready.returncode == 0:
                return
            time.sleep(0.2)

    def _socket_dir(self, role: str) -> Path:
        """Outside the data directory, which pg_basebackup copies whole."""
        path = self.base / f"sockets-{role}"
        path.mkdir(exist_ok=True)
        shutil.chown(path, "postgres")
        return path

    def _as_postgres(self, *command: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command]

    def _server(self, name: str, host: Host, data: Path) -> Process:
        command = self._as_postgres(str(PG_BIN / "postgres"), "-D", str(data))
        return Process(name, host, command, self.base / f"{name}.log")

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.base, "postgres")
        self.base.chmod(0o755)
        self._mount(self.primary_dir)
        self._mount(self.replica_dir)
        sh(
            *self._as_postgres(
                str(PG_BIN / "initdb"),
                "-D",
                str(self.primary_dir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            )
        )
        primary = self.network["pg"]
        (self.primary_dir / "postgresql.auto.conf").write_text(
            f"listen_addresses = '{primary.address}'\nport = 5432\n"
            f"unix_socket_directories = '{self._socket_dir('primary')}'\n"
            "wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n"
            "synchronous_standby_names = '*'\nfsync = on\nmax_connections = 200\n"
            # WAL recycled well within DATA_DISK (the default max_wal_size is 1 GB).
            "max_wal_size = 96MB\nmin_wal_size = 32MB\n"
        )
        with (self.primary_dir / "pg_hba.conf").open("a") as hba:
            hba.write(
                f"host all all {self.network.subnet}.0/24 trust\n"
                f"host replication all {self.network.subnet}.0/24 trust\n"
            )
        self.primary = self._server("pg-primary", primary, self.primary_dir)
        self.primary.start()
        wait_port(primary.address, 5432, 30, "PostgreSQL primary", self.primary.popen)
        replica = self.network["pg2"]
        deadline = time.monotonic() + 30
        while True:  # listening is not ready: "the database system is starting up"
            copied = sh(*replica.run(*self._as_postgres(
                str(PG_BIN / "pg_basebackup"), "-h", primary.address, "-U", "postgres",
                "-D", str(self.replica_dir), "-R", "-X", "stream", "--no-sync",
            )), check=False)  # fmt: skip
            if copied.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pg_basebackup failed: {copied.stderr.strip()}")
            for leftover in self.replica_dir.iterdir():  # the mount point itself stays
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink()
            time.sleep(0.5)
        with (self.replica_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '{replica.address}'\n"
                f"unix_socket_directories = '{self._socket_dir('replica')}'\n"
                "synchronous_standby_names = ''\n"
            )
        self.replica = self._server("pg-replica", replica, self.replica_dir)
        self.replica.start()
        wait_port(replica.address, 5432, 30, "PostgreSQL replica", self.replica.popen)
        sh(
            *primary.run(
                str(PG_BIN / "psql"),
                "-h",
                primary.address,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE tidings",
            )
        )

    def fail_over(self) -> None:
        """Fence the primary (killed) and promote the replica, once per campaign."""
        assert self.primary is not None and self.replica is not None
        self.primary.kill()
        self.replica.resume()
        sh(
            *self.network["pg2"].run(
                *self._as_postgres(
                    str(PG_BIN / "pg_ctl"), "promote", "-D", str(self.replica_dir), "-w"
                )
            )
        )
        self.failed_over = True

    @property
    def current(self) -> Process | None:
        return self.replica if self.failed_over else self.primary

    def stop(self) -> None:
        try:
            for server in (self.replica, self.primary):
                if server is not None:
                    server.stop()
        finally:
            self._unmount()


class Redis:
    """Redis without persistence: a restart loses everything it held."""

    def __init__(self, network: Network, base: Path) -> None:
        host = network["redis"]
        command = [
            "redis-server",
            "--bind",
            host.address,
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        self.host = host
        self.process = Process("redis", host, command, base / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://{self.host.address}:6379/0"

    def start(self) -> None:
        self.process.start()
        wait_port(self.host.address, 6379, 20, "Redis", self.process.popen)

    def restart_empty(self) -> None:
        self.process.kill()
        self.start()


class Node:
    """One `tidings serve` in its host."""

    def __init__(
        self, name: str, network: Network, base: Path, store: str, cluster: str, secrets: Path
    ) -> None:
        self.name = name
        self.host = network[name]
        self.origin = f"http://{self.host.address}:8080"
        command = [
            sys.executable, "-m", "tidings", "serve",
            "--host", self.host.address, "--port", "8080",
            "--store", store, "--cluster", cluster, "--secrets", str(secrets),
            "--node-id", name, "--public-url", self.origin, "--log-level", "warning",
        ]  # fmt: skip
        env = {
            "PYTHONPATH": str(REPO / "src"),
            "TIDINGS_RATE_LIMIT_EXEMPT": f"{network.subnet}.0/24",
            "TIDINGS_EXPIRY_SWEEP_INTERVAL": "1",
            "TIDINGS_DB": str(base / f"{name}.db"),
        }
        self.process = Process(name, self.host, command, base / f"{name}.log", env)

    def start(self, timeout: float = 60) -> None:
        self.process.start()
        wait_port(self.host.address, 8080, timeout, f"node {self.name}", self.process.popen)

    def healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.origin}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False
