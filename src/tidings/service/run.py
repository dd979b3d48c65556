"""Running one service node until SIGTERM or SIGINT, then draining."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from tidings import tracing
from tidings.service.config import ServiceConfig
from tidings.service.core import PushService
from tidings.service.http.node_counts import NodeColumn, NodeCounts
from tidings.service.http.server import HttpServer, tls_context
from tidings.service.keyfile import KeyFileError
from tidings.service.push_app import PushApp
from tidings.service.store import StoreUnavailable

log = logging.getLogger("tidings.service")


def build_server(
    config: ServiceConfig, service: PushService | None = None, node: NodeColumn | None = None
) -> HttpServer[PushApp]:
    """The listener for `config` (not started); `.app.service` is the push service.

    `node`: this worker's column of the node's shared per-address counts (`--workers N`).
    """
    ssl_context = None
    if config.tls_cert and config.tls_key:
        ssl_context = tls_context(config.tls_cert, config.tls_key)
    server = HttpServer(
        PushApp(service or PushService(config)),
        host=config.host,
        port=config.port,
        ssl_context=ssl_context,
        reuse_port=config.reuse_port,
    )
    server.context.admission.node = node
    server.app.service.metrics.watch_connections(server.context.admission)
    return server


GC_YOUNG_THRESHOLD = 20_000  # allocations between two young-generation collections


def tune_garbage_collector() -> None:
    """Collect less often once started.

    What start-up built lives as long as the process, so it is moved out of the
    collector's sight (`gc.freeze`). A request allocates a few dozen objects, nearly
    all freed by reference counting, yet at the default threshold (700) the young
    generation was collected hundreds of times a second under load; at 20,000 the
    service measured about 5 % more pushes per second and a p99 of 25 ms against 38.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


OPEN_FILES_CEILING = 1 << 20  # the kernel's usual nr_open: the most a soft limit may be


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one and return the limit now in force.

    Every client connection holds a descriptor, and the usual soft limit (1,024) would
    cap a node at a few hundred browsers while the hard limit allows far more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # e.g. above nr_open: keep what there is
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, wanted, exc)
            return soft
        return wanted
    return soft


DRAIN_GRACE = 10.0  # seconds for connections to finish before they are closed
STOP_LIMIT = 30.0  # past this, shutdown gives up waiting (store, cluster) and exits


async def run(config: ServiceConfig, node: NodeColumn | None = None) -> None:
    """Serve until a termination signal, then drain and stop."""
    # Signals are taken before start-up, so a SIGTERM during it still drains cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if config.otlp_endpoint:
        # Per process: each --workers process exports its own spans.
        tracing.enable(f"tidings {config.node_id or 'node'}", endpoint=config.otlp_endpoint)
    server = build_server(config, node=node)
    await server.start()
    tune_garbage_collector()
    log.info("serving on %s", config.origin)
    service = server.app.service
    try:
        # A store down at start is retried in the background; a fatal error met once it
        # answers (a wrong key file) stops the node as it would have at start.
        stopping = asyncio.ensure_future(stop.wait())
        failing = asyncio.ensure_future(service.start_failed.wait())
        await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        failing.cancel()
        log.info("draining: closing connections")
    finally:
        try:
            await asyncio.wait_for(server.stop(grace=DRAIN_GRACE), STOP_LIMIT)
        except TimeoutError:
            log.error("shutdown did not finish within %.0f s; exiting anyway", STOP_LIMIT)
        tracing.disable()  # spans still queued are exported
    log.info("stopped")
    if service.start_error is not None:
        raise service.start_error


def _runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop's runner when it is installed, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


async def prepare(config: ServiceConfig) -> None:
    """Migrate the store and create the token keys once, before workers start."""
    service = PushService(config)
    try:
        await service.store.open()
    except StoreUnavailable as exc:
        if not (config.shared_store and config.secrets_path.exists()):
            raise
        # Each worker retries it and migrates under PostgreSQL's advisory lock; the
        # shared key file exists already, so nothing is left to do once before forking.
        log.warning("store unavailable before starting the workers: %s", exc)
        await service.store.close()
        return
    try:
        from tidings.service.keyfile import load_sealer

        await load_sealer(config.secrets_path, service.store)
    finally:
        await service.store.close()


def serve_workers(config: ServiceConfig) -> None:
    """Run `config.workers` processes sharing the port (SO_REUSEPORT); stop them together.

    Each worker is a node of the cluster (its own node id), so a push accepted by one
    reaches a user agent connected to another through the cluster bus.
    """
    if not config.cluster:
        raise SystemExit(
            "tidings serve: --workers needs --cluster redis://...: a push accepted by one "
            "worker must reach user agents connected to the others"
        )
    _runner()(prepare(config))
    base = config.node_id or f"{os.uname().nodename}-{os.getpid()}"
    # Made before forking: every worker maps it (per-address caps count node-wide).
    counts = NodeCounts(config.workers)
    children: list[int] = []
    received: list[int] = []  # a stop signal that came while workers were forking

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    # Taken before forking, so no signal can stop the parent and orphan its workers.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(config.workers):
        if received:
            break
        pid = os.fork()
        if pid == 0:  # the worker
            # The parent's forwarding handler is not the worker's: run() takes the signals.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            worker = dataclasses.replace(
                config, workers=1, reuse_port=True, node_id=f"{base}-w{index}"
            )
            code = 0
            try:
                _runner()(run(worker, counts.column(index)))
            except BaseException as exc:  # report and leave without running parent code
                print(f"tidings worker {index}: {exc}", file=sys.stderr)
                code = 1
            os._exit(code)
        children.append(pid)
    if received:  # workers forked after the signal have not heard it yet
        forward(received[0], None)
    failed = 0
    running = dict(zip(children, range(len(children)), strict=True))
    while running:  # in the order they end: an exited worker's counts are zeroed at once
        try:
            child, status = os.waitpid(-1, 0)
        except ChildProcessError:  # none left to wait for
            break
        if child not in running:
            continue
        index = running.pop(child)
        counts.reset(index)
        failed += os.waitstatus_to_exitcode(status) != 0
    if failed:
        raise SystemExit(1)


def serve(config: ServiceConfig) -> None:
    """Run the push service (with uvloop when it is installed)."""
    raise_open_file_limit()
    try:
        if config.workers > 1:
            serve_workers(config)
        else:
            _runner()(run(config))
    except (KeyFileError, OSError) as exc:
        # Start-up refused (key file, port in use...): say why and exit 1, no traceback.
        raise SystemExit(f"tidings serve: {exc}") from None
