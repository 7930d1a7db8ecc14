"""The ``cache-refresher`` command line (typer + rich).

This module holds the typer app and the commands that need only this package:
``run`` (the refresh loop), ``refresh`` (one namespace now, with progress),
``namespaces``, ``runs``, ``secrets status``, ``db init`` and ``db sql``. What
they print is built in :mod:`refresher.tables`. ``api.cli`` adds ``api``,
``dev`` and ``devstack token`` (they serve or call the web app, and this
package never imports ``api``) and is the console script's entry point.

Every command builds its :class:`~refresher.settings.Settings` with
:func:`~refresher.settings.load_settings`, so ``CACHE_REFRESHER_*`` variables
apply. Our errors print one line and exit non-zero, never a traceback:
exit 2 for bad settings or arguments, 1 when the work itself failed. With
``CACHE_REFRESHER_LOG_FORMAT=json`` that line is a JSON record at ERROR, like
every other line on standard error, so a log collector keeps it.

Standard output not being a terminal (a pipe, a file, CI, ``kubectl exec``
without ``-t``), tables are as wide as their rows unless ``COLUMNS`` says
otherwise: no namespace name or secret version is cut to fit 80 columns.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Annotated, NoReturn

import typer
from prometheus_client import CollectorRegistry
from rich.console import Console, ConsoleDimensions
from sqlalchemy.engine import Engine, make_url

from refresher.cache import CacheStore, check_namespace, describe_error
from refresher.db import cache_engine, database_problem, describe_database, init_schema, utcnow
from refresher.db_check import schema_problems
from refresher.ddl import DIALECTS, render_ddl
from refresher.errors import CacheRefresherError, ConfigurationError, StoreError
from refresher.findings import Outcome, any_failed
from refresher.lease import LeaseManager, default_holder
from refresher.logs import configure_logging, log_fatal_as_json
from refresher.metrics import RefreshMetrics, serve_metrics
from refresher.namespaces import Namespace, load_namespaces, sources_closed_after
from refresher.preflight import DEFAULT_TIMEOUT_SECONDS, preflight
from refresher.probes import scheduler_probes
from refresher.progress import RefreshProgress
from refresher.refresh import RefreshOutcome, is_expected, refresh_now
from refresher.refresh_requests import RefreshRequest, request_refresh, request_status
from refresher.scheduler import Scheduler
from refresher.services import AppServices, open_services
from refresher.settings import Settings, load_settings, requested_log_format
from refresher.tables import (
    findings_table,
    namespace_table,
    refresh_summary,
    runs_table,
    secret_errors,
    secrets_table,
)

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2
STOP_POLL_SECONDS = 0.5
"""How often ``run``'s main thread looks whether a signal asked it to stop."""
QUEUE_POLL_SECONDS = 0.5
"""How often ``refresh --queue`` looks whether its request was served."""
PIPED_WIDTH = 10_000
"""Columns of standard output when it is not a terminal and ``COLUMNS`` is not set: wide
enough that no table row is folded, so that ``grep`` finds a whole namespace name or
secret version in ``cache-refresher namespaces | grep ...``. A table is only as wide as
its cells, and a line of text is not padded."""

app = typer.Typer(
    name="cache-refresher",
    help="Keep a shared cache table filled from upstream sources, and serve it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Create the cache tables, or print their DDL.", no_args_is_help=True)
app.add_typer(db_app, name="db")
secrets_app = typer.Typer(help="The Key Vault secrets the service uses.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")


class _Stdout(Console):
    """rich's console, :data:`PIPED_WIDTH` wide when its output is not a terminal and
    ``COLUMNS`` is not set, where rich would take 80 columns (or the width of a terminal
    that stdin or stderr is) and cut every table to fit."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        # COLUMNS is the terminal's convention, which rich reads too: not one of our settings.
        if self.is_terminal or os.environ.get("COLUMNS", "").isdigit():  # noqa: TID251
            return size
        return ConsoleDimensions(PIPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self.width, self.height = new_size


console = _Stdout()
errors = Console(stderr=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``message`` to stderr as one error and exit with ``code``.

    With the JSON log format it is a JSON record at ERROR instead of a line of
    text: both would go to standard error, where a log collector reads every
    line as JSON (and would drop this one, the most important).
    """
    if not log_fatal_as_json(message, logger=__name__):
        errors.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn our errors into a message and an exit code (2 for configuration, else 1)."""
    try:
        yield
    except ConfigurationError as exc:
        fail(str(exc), EXIT_USAGE)
    except CacheRefresherError as exc:
        fail(str(exc), EXIT_FAILED)


HTTP_CLIENT_LOGGERS = (
    "azure.core.pipeline.policies.http_logging_policy",
    "httpx",
    "azure.identity",
)
"""Log every request at INFO (azure-core with its headers, values redacted; httpx its URL,
an API key in the query blanked; azure-identity each token it hands out, cached or not):
quiet unless the log level is DEBUG."""
RAW_HEADER_LOGGERS = ("httpcore",)
"""Quiet (WARNING) whatever the log level, DEBUG included. httpcore, httpx's transport,
logs every response's raw headers at DEBUG (an upstream's ``Link`` header may echo an API
key sent in the query), and its errors quote a request header's value: nothing can redact
them, and httpx's own records say what a developer needs."""


def observed_scheduler(
    settings: Settings, store: CacheStore, namespaces: Sequence[Namespace], services: AppServices
) -> tuple[Scheduler, RefreshMetrics]:
    """The scheduler for ``namespaces``, with metrics observing every refresh it runs."""
    metrics = RefreshMetrics(
        CollectorRegistry(), store=store, namespaces=namespaces,
        identity=services.identity, secrets=services.secrets,
    )  # fmt: skip
    scheduler = Scheduler(
        store, namespaces, services=services.for_sources(), workers=settings.refresh_workers,
        request_poll=settings.request_poll_seconds, on_outcome=metrics.observe,
    )  # fmt: skip
    return scheduler, metrics


def settings_or_exit(**overrides: object) -> Settings:
    """The settings from the environment and ``overrides``, or exit 2 saying what is wrong
    (as a JSON record if the environment asks for JSON logs)."""
    try:
        settings = load_settings(**overrides)
    except ConfigurationError as exc:
        configure_logging("INFO", requested_log_format())
        fail(str(exc), EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_format)
    if settings.log_level != "DEBUG":
        # Both log every request at INFO (azure-core with all its headers): noise for an
        # operator; DEBUG brings them back.
        for name in HTTP_CLIENT_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    for name in RAW_HEADER_LOGGERS:  # whatever the level: they would log secrets
        logging.getLogger(name).setLevel(logging.WARNING)
    return settings


@db_app.command("init")
def db_init() -> None:
    """Create the cache tables that do not exist yet on CACHE_REFRESHER_DATABASE_URL.

    Production identities usually lack DDL rights: then a DBA applies the
    reviewed DDL (see `cache-refresher db sql`).
    """
    settings = settings_or_exit()
    with reported_errors(), cache_engine(settings) as engine:
        init_schema(engine)
    console.print(
        f"The cache tables exist on {describe_database(engine.url)}.",
        highlight=False, markup=False, soft_wrap=True,
    )  # fmt: skip


@db_app.command("sql")
def db_sql(
    dialect: Annotated[
        str,
        typer.Option(
            "--dialect",
            metavar="|".join(sorted(DIALECTS)),
            help="The database the DDL is for.",
        ),
    ],
) -> None:
    """Print the DDL that creates the cache tables (what a DBA applies)."""
    with reported_errors():
        ddl = render_ddl(dialect)
    typer.echo(ddl, nl=False)


# -- the refresh loop -------------------------------------------------------------------


@app.command("run")
def run() -> None:
    """Keep every namespace of CACHE_REFRESHER_NAMESPACES_FILE refreshed, until SIGTERM/Ctrl-C.

    Run one per replica: they share the work through the database (leases and
    the run history). Metrics are served on CACHE_REFRESHER_METRICS_PORT.
    """
    settings = settings_or_exit()
    with reported_errors():
        namespaces = configured_namespaces(settings)
    stop = threading.Event()
    with (
        stop_on_signals(stop),
        reported_errors(),
        sources_closed_after(namespaces),
        open_services(settings) as services,
        cache_engine(settings, identity=services.identity) as engine,
    ):
        store = _store(settings, engine)
        check_tables(store)
        scheduler, metrics = observed_scheduler(settings, store, namespaces, services)
        stuck = _serve_until(stop, settings, scheduler, metrics)
    console.print("Stopped.", highlight=False)
    if stuck:
        # Their threads cannot be ended and would keep this process, and their leases,
        # alive until whatever blocks them lets go (and then commit): end it now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _serve_until(
    stop: threading.Event, settings: Settings, scheduler: Scheduler, metrics: RefreshMetrics
) -> int:
    """Run ``scheduler`` (and the metrics and probes) until ``stop``; how many refreshes
    did not stop (:meth:`Scheduler.stop`)."""
    port = settings.metrics_port
    probes = scheduler_probes(scheduler.state)
    stop_metrics = (
        serve_metrics(metrics.registry, host=settings.metrics_host, port=port, probes=probes)
        if port
        else None
    )
    scheduler.start()
    where = (
        f"http://{settings.metrics_host}:{port}/metrics (probes: /healthz, /readyz)"
        if port
        else "off"
    )
    console.print(
        f"cache-refresher run: {len(scheduler.namespaces)} namespace(s) "
        f"({', '.join(sorted(scheduler.namespaces))}) as {scheduler.holder} on "
        f"{describe_database(scheduler.store.engine.url)}; metrics: {where}",
        highlight=False, markup=False, soft_wrap=True,
    )  # fmt: skip
    try:
        while not stop.wait(STOP_POLL_SECONDS):
            pass
    finally:
        console.print("Stopping: letting refreshes in progress finish...", highlight=False)
        stuck = scheduler.stop(settings.stop_grace_seconds)
        if stop_metrics is not None:
            stop_metrics()
    return stuck


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM or SIGINT (restoring the previous handlers after)."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command("refresh")
def refresh(
    namespace: Annotated[str, typer.Argument(help="The namespace to refresh.")],
    queue: Annotated[
        bool,
        typer.Option(
            "--queue",
            help="Ask the running service (whichever replica is free) to refresh it, and wait.",
        ),
    ] = False,
    wait: Annotated[
        float, typer.Option(min=0, help="With --queue: seconds to wait for the outcome.")
    ] = 300.0,
    allow_deletions: Annotated[
        bool,
        typer.Option(
            "--allow-deletions",
            help="Let this refresh delete what it must, past the namespace's max_deleted "
            "and allow_empty guards (when the source's change is real).",
        ),
    ] = False,
) -> None:
    """Refresh one namespace now, with progress; exit 1 (saying why) if it fails.

    Ctrl-C or SIGTERM stops it: the refresh rolls back (the run is recorded
    abandoned, the lease released) and the command exits 1.
    """
    settings = settings_or_exit()
    with reported_errors():
        chosen = configured_namespace(settings, namespace)
    if queue:
        chosen.source.close()  # the replicas use their own
        if allow_deletions:
            fail("--allow-deletions refreshes in this process: leave out --queue", EXIT_USAGE)
        _queue_refresh(settings, namespace, wait)
        return
    if allow_deletions:
        chosen = dataclasses.replace(chosen, allow_empty=True, max_deleted=None)
    try:
        with (
            sigterm_interrupts(),
            reported_errors(),
            sources_closed_after([chosen]),
            open_services(settings, background=False) as services,
            cache_engine(settings, identity=services.identity) as engine,
            RefreshProgress(errors) as progress,
        ):
            outcome = refresh_now(
                _store(settings, engine), chosen, services=services.for_sources(),
                progress=progress.items, page_progress=progress.pages,
            )  # fmt: skip
    except KeyboardInterrupt as exc:
        fail(
            f"refresh of namespace {namespace!r} stopped ({type(exc).__name__}): nothing was "
            "committed (a run in progress is recorded abandoned and its lease released); the "
            "cache keeps its last complete refresh"
        )
    _report(outcome, settings)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C's ``KeyboardInterrupt`` is (the run history names it)."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C (:class:`Terminated` in the main thread), so both stop a
    command the same clean way: its ``with`` blocks roll back and close what it opened."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(outcome: RefreshOutcome, settings: Settings) -> None:
    error = outcome.error
    if error is not None:
        if not is_expected(error):
            logger.error("refresh of %r failed unexpectedly", outcome.namespace, exc_info=error)
        why = database_problem(error, make_url(settings.database_url)) or describe_error(error)
        fail(f"refresh of namespace {outcome.namespace!r} failed ({type(error).__name__}): {why}")
    assert outcome.result is not None
    console.print(
        refresh_summary(outcome.namespace, outcome.result, outcome.seconds), highlight=False
    )


def _queue_refresh(settings: Settings, namespace: str, wait: float) -> None:
    who = f"{getpass.getuser()}@{socket.gethostname()} (cache-refresher refresh --queue)"
    with reported_errors(), cache_engine(settings) as engine:
        request_id = request_refresh(engine, namespace, who)
        console.print(f"Asked for a refresh of {namespace!r} (request {request_id}).")
        request = _await_request(engine, request_id, wait)
    if request is None or not request.finished:
        fail(
            f"no replica finished request {request_id} within {wait:g} s: is "
            "`cache-refresher run` running with this namespace? The request stays queued."
        )
    if request.status == "failed":
        fail(f"refresh of namespace {namespace!r} failed: {request.error_message}")
    console.print(
        f"Refreshed namespace {namespace!r} by {request.claimed_by} (run {request.run_id}).",
        highlight=False,
    )


def _await_request(engine: Engine, request_id: int, wait: float) -> RefreshRequest | None:
    deadline = time.monotonic() + wait
    with errors.status("waiting for a replica to serve the request..."):
        while True:
            request = request_status(engine, request_id)
            if request is None or request.finished or time.monotonic() >= deadline:
                return request
            time.sleep(QUEUE_POLL_SECONDS)


# -- operator views -----------------------------------------------------------------------


@app.command("namespaces")
def list_namespaces() -> None:
    """List the namespaces: rows, generation, last success, age, stale, last error.

    With CACHE_REFRESHER_NAMESPACES_FILE set, configured namespaces that never
    refreshed are listed too, and `stale` compares each age with its max staleness.
    """
    settings = settings_or_exit()
    with reported_errors():
        configured = configured_namespaces(settings) if settings.namespaces_file else None
    with reported_errors(), cache_engine(settings) as engine:
        store = CacheStore(engine)
        infos = store.namespaces()
        missing = {n.name for n in configured or ()} - {info.namespace for info in infos}
        latest = {name: next(iter(store.runs(name, limit=1)), None) for name in missing}
    if not infos and not configured:
        console.print("No namespace has been refreshed yet.", highlight=False)
        return
    staleness = None if configured is None else {n.name: n.max_staleness for n in configured}
    console.print(namespace_table(infos, staleness, utcnow(), never_refreshed=latest))


@app.command("runs")
def list_runs(
    namespace: Annotated[str, typer.Argument(help="The namespace whose history to show.")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many runs, newest first.")] = 20,
) -> None:
    """Show the recent refresh runs of a namespace: when, how long, outcome, counts, why.

    With CACHE_REFRESHER_NAMESPACES_FILE set, the namespace must be one it defines.
    """
    settings = settings_or_exit()
    with reported_errors():
        check_namespace(namespace)
        if settings.namespaces_file is not None:
            configured_namespace(settings, namespace).source.close()
    with reported_errors(), cache_engine(settings) as engine:
        runs = CacheStore(engine).runs(namespace, limit=limit)
    if not runs:
        console.print(f"Namespace {namespace!r} has no refresh runs yet.", highlight=False)
        return
    console.print(runs_table(runs))


@secrets_app.command("status")
def secrets_status() -> None:
    """Check every configured Key Vault secret now and show its versions: never a value.

    Exit 1 if a secret has no usable value.
    """
    settings = settings_or_exit()
    if settings.vault_url is None:
        fail("CACHE_REFRESHER_VAULT_URL is not set: there are no secrets to show", EXIT_USAGE)
    with reported_errors(), open_services(settings, background=False) as services:
        assert services.secrets is not None
        services.secrets.check()
        statuses = services.secrets.status()
    if not statuses:
        console.print("CACHE_REFRESHER_SECRETS names no secret.", highlight=False)
        return
    console.print(secrets_table(statuses))
    for line in secret_errors(statuses):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if any(status.state == "failed" for status in statuses):
        raise typer.Exit(EXIT_FAILED)


@app.command("check")
def check(
    sources: Annotated[
        bool,
        typer.Option(
            "--sources",
            help="Also read each namespace's first item from its upstream (one request each).",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the findings as a JSON array, for scripts.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            min=1, help="Seconds the whole check may take; a step still waiting then fails."
        ),
    ] = DEFAULT_TIMEOUT_SECONDS,
) -> None:
    """Check that this environment's settings would work: app identity, Key Vault secrets,
    database tables and rights, namespaces file; exit 1 if anything would fail.

    Run it before rolling out a replica. It writes nothing, and shows names, versions and
    roles, never a secret's value or a token.
    """
    settings = settings_or_exit()
    with reported_errors():
        findings = preflight(settings, sources=sources, timeout=timeout)
    if as_json:
        records = [dataclasses.asdict(finding) for finding in findings]
        print(json.dumps(records, indent=2))
    else:
        console.print(findings_table(findings))
    if any_failed(findings):
        raise typer.Exit(EXIT_FAILED)


# -- shared by the commands ---------------------------------------------------------------


def configured_namespaces(settings: Settings) -> list[Namespace]:
    """The namespaces of the configured file (ConfigurationError if unset or wrong)."""
    if settings.namespaces_file is None:
        raise ConfigurationError(
            "CACHE_REFRESHER_NAMESPACES_FILE is not set: point it at the TOML file "
            "that defines the namespaces"
        )
    return load_namespaces(settings.namespaces_file, configured_secrets=settings.secrets)


def configured_namespace(settings: Settings, name: str) -> Namespace:
    """One namespace of the configured file (the caller closes its source), or a
    ConfigurationError: a name no namespace may have, or one the file does not define
    (naming those it does)."""
    check_namespace(name)
    namespaces = {namespace.name: namespace for namespace in configured_namespaces(settings)}
    for other in namespaces.values():
        if other.name != name:
            other.source.close()
    if name not in namespaces:
        raise ConfigurationError(
            f"namespace {name!r} is not defined in {settings.namespaces_file}: "
            f"use one of {', '.join(sorted(namespaces))}"
        )
    return namespaces[name]


def check_tables(store: CacheStore) -> None:
    """Fail at start, not in every loop, when the tables are missing or are not this
    version's (a StoreError naming the DDL or migration to apply); log what would only
    make the service slower (a missing index)."""
    problems = schema_problems(store.engine)
    failed = [problem.detail for problem in problems if problem.outcome is Outcome.FAILED]
    if failed:
        raise StoreError("; ".join(failed))
    for problem in problems:
        logger.warning("the cache tables: %s", problem.detail)
    store.namespaces()
    request_status(store.engine, 0)


def _store(settings: Settings, engine: Engine) -> CacheStore:
    holder = default_holder(settings.replica_id)
    return CacheStore(
        engine,
        leases=LeaseManager(engine, holder=holder, ttl=settings.lease_ttl_seconds),
        runs_kept=settings.runs_kept,
    )
