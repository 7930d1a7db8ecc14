"""Soak benchmark: ``cache-refresher dev`` refreshing every second or two for minutes, read
through its API meanwhile, watched for resources that grow with the refreshes.

Run: ``python bench/soak.py [--minutes 5] [--engine sqlite|postgresql] [--interval 1]
[--sample 5] [--warmup 60] [--reads 4] [--probe malloc|tracemalloc] [--markdown]``.

What one run does, in a temporary directory, every server on 127.0.0.1 and
every process it started stopped by its PID at the end:

1. starts ``cache-refresher dev --port <free port> --interval <interval>`` as
   an operator would, in that directory (so its ``./.dev`` is the run's own):
   its devstack, the tables (SQLite at ``./.dev/cache.db``, or with
   ``--engine postgresql`` a database of its own, ``soak_<random>``, created
   on ``--postgres-url``'s server and dropped at the end), the namespaces
   ``demo``, ``users`` and ``users-by-key`` refreshed every interval (the API
   key rotating every 4 intervals), and the API;
2. reads through the API, ``--reads`` requests a second, with tokens from
   ``cache-refresher devstack token`` (a new user token every
   :data:`TOKEN_SECONDS`, so the validated-token cache sees tokens come and
   expire): the namespace list, item pages (following ``next``), single
   items (half of them conditional); and asks for an on-demand refresh of
   ``users`` every :data:`QUEUE_SECONDS` with an admin app token;
3. every ``--sample`` seconds records the service process's RSS, open file
   descriptors and threads (Linux ``/proc``), its database connections (file
   descriptors on the SQLite file, or its database's rows in
   ``pg_stat_activity``), the refreshes done (``/metrics``), the rows of the
   run history and of the refresh requests, and SQLite's WAL size; with
   ``--probe`` the service runs under ``bench/soak_probe.py``: ``malloc``
   adds glibc's bytes in use and free in its arenas (RSS that grows while the
   bytes in use do not is fragmentation, not a leak) and the collector's object
   count; ``tracemalloc`` adds the Python allocations and the lines that grew
   (slower and bigger: not the RSS to judge);
4. stops after ``--minutes`` and prints the figures over time and, per
   resource, its slope after ``--warmup`` seconds against the refreshes done:
   the median of the slopes between every two samples (Theil-Sen, robust to the
   noise of a shared machine), per 100 refreshes, against a threshold. The run
   history is expected to grow one row per refresh between two prunings (at
   most hourly per process: ``CACHE_REFRESHER_RUNS_KEEP_DAYS``), so it is
   shown, not judged, in a run shorter than an hour.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import sqlalchemy as sa
from api_load import Processes, base_env, cpu_seconds, free_port, log
from refresh import DEFAULT_POSTGRES_URL, Check, machine_info, markdown_table, text_table
from sqlalchemy.engine import Engine, make_url

BENCH = Path(__file__).resolve().parent
REPO = str(BENCH.parent)
CONSOLE_SCRIPT = Path(sys.executable).with_name("cache-refresher")
START_SECONDS = 90.0
STOP_SECONDS = 60.0
"""The service's stop grace (20 s by default) and its devstack's, with room to spare."""
TOKEN_SECONDS = 120.0
"""A new user token this often (each valid for :data:`TOKEN_LIFETIME`)."""
TOKEN_LIFETIME = 300
QUEUE_SECONDS = 30.0
PROBE_SECONDS = 20.0
PAGE = 50
NAMESPACES = ("demo", "users", "users-by-key")

# Thresholds per 100 refreshes after warm-up (medians of slopes). With the
# defaults (three namespaces every 30 s) a process does ~8,600 refreshes a
# day: 256 KiB per 100 would be ~22 MiB a day, found here in minutes at 1 s.
RSS_KIB_PER_100 = 256.0
WAL_KIB_PER_100 = 64.0
COUNT_PER_100 = 0.5  # file descriptors, threads, connections, rows: one per 200 refreshes
# (fewer, e.g. one per queued refresh, needs a longer run than a few minutes to tell apart
# from connections that come and go)
TRACED_KIB_PER_100 = 64.0  # --probe: bytes tracemalloc traces


# -- the service -----------------------------------------------------------------------


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    base: str
    workdir: Path
    database_url: str

    @property
    def env_file(self) -> Path:
        return self.workdir / ".dev" / "devstack" / "service.env"

    def token(self, *options: str) -> str:
        """A token from ``cache-refresher devstack token`` (as the README says for dev)."""
        argv = [str(CONSOLE_SCRIPT), "devstack", "token", "--env-file", str(self.env_file)]
        done = subprocess.run(
            [*argv, "--expires-in", str(TOKEN_LIFETIME), *options],
            cwd=self.workdir, env=base_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"devstack token failed: {done.stderr.strip()}")
        return done.stdout.strip()


def start_service(
    procs: Processes, args: argparse.Namespace, workdir: Path, database_url: str
) -> Service:
    port = free_port()
    command = ["dev", "--port", str(port), "--interval", f"{args.interval:g}"]
    if args.probe:
        probe = [str(workdir / "probe.jsonl"), f"{PROBE_SECONDS:g}", f"{args.warmup:g}"]
        probe += [args.probe, "--"]
        argv = [sys.executable, "-P", str(BENCH / "soak_probe.py"), *probe, *command]
    else:
        argv = [str(CONSOLE_SCRIPT), *command]
    env = {**base_env(), "CACHE_REFRESHER_DATABASE_URL": database_url}
    process = procs.start("service", argv, cpu=None, env=env, cwd=workdir)
    service = Service(process, f"http://127.0.0.1:{port}", workdir, database_url)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.TransportError):
            if (
                httpx.get(f"{service.base}/healthz", timeout=2).is_success
                and service.env_file.exists()
            ):
                return service
        time.sleep(0.5)
    raise SystemExit(f"cache-refresher dev did not start:\n{procs.log_tail('service', 30)}")


@contextlib.contextmanager
def database(args: argparse.Namespace, workdir: Path) -> Iterator[str]:
    """The service's database URL: SQLite in ``workdir``, or a PostgreSQL database of its own."""
    if args.engine == "sqlite":
        yield f"sqlite:///{workdir / '.dev' / 'cache.db'}"
        return
    admin = sa.create_engine(args.postgres_url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    name = f"soak_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


# -- the readers -----------------------------------------------------------------------


@dataclass
class Reads:
    """What the reader thread got: status codes (0: no answer) and its last failure."""

    statuses: Counter[int] = field(default_factory=Counter)
    queued: int = 0
    last_error: str = ""

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status == 0 or status >= 400)


class Reader:
    """A light stream of authenticated reads (and a queued refresh now and then), in a thread."""

    def __init__(self, service: Service, per_second: float) -> None:
        self.service = service
        self.pause = 1.0 / per_second
        self.reads = Reads()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-reader", daemon=True)
        self._keys: dict[str, list[str]] = {}
        self._etags: dict[tuple[str, str], str] = {}

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        user = admin = ""
        user_at = admin_at = queued_at = -1e9
        with httpx.Client(base_url=self.service.base, timeout=30) as client:
            for n in itertools.count():
                now = time.monotonic()
                try:
                    if now - user_at >= TOKEN_SECONDS:
                        user, user_at = self.service.token(), now
                    if now - admin_at >= TOKEN_LIFETIME / 2:
                        admin, admin_at = self.service.token("--app", "--role", "Cache.Admin"), now
                    if now - queued_at >= QUEUE_SECONDS:
                        queued_at = now
                        self._get(client, admin, "/v1/namespaces/users/refresh", method="POST")
                        self.reads.queued += 1
                    self._read(client, user, n)
                except (httpx.HTTPError, RuntimeError, subprocess.TimeoutExpired) as exc:
                    self.reads.statuses[0] += 1
                    self.reads.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if self._stop.wait(self.pause):
                    return

    def _read(self, client: httpx.Client, token: str, n: int) -> None:
        namespace = NAMESPACES[n % len(NAMESPACES)]
        kind = (n // len(NAMESPACES)) % 3
        if kind == 0:
            self._get(client, token, "/v1/namespaces")
        elif kind == 1:
            body = self._get(client, token, f"/v1/namespaces/{namespace}/items?limit={PAGE}")
            if body.get("next"):
                self._get(client, token, str(body["next"]))
            if page := [str(item["key"]) for item in body.get("items", [])]:
                self._keys[namespace] = page
        elif keys := self._keys.get(namespace):
            self._item(client, token, namespace, keys[n % len(keys)], conditional=n % 2 == 0)

    def _item(
        self, client: httpx.Client, token: str, namespace: str, key: str, *, conditional: bool
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        etag = self._etags.get((namespace, key))
        if conditional and etag:
            headers["If-None-Match"] = etag
        path = f"/v1/namespaces/{namespace}/items/{quote(key, safe='')}"
        response = client.get(path, headers=headers)
        self.reads.statuses[response.status_code] += 1
        if response.status_code == 200:
            self._etags[(namespace, key)] = response.headers.get("etag", "")
        elif response.status_code >= 400:
            self.reads.last_error = f"GET {path}: {response.status_code} {response.text[:200]}"

    def _get(
        self, client: httpx.Client, token: str, path: str, *, method: str = "GET"
    ) -> dict[str, Any]:
        response = client.request(method, path, headers={"Authorization": f"Bearer {token}"})
        self.reads.statuses[response.status_code] += 1
        if response.status_code >= 400:
            self.reads.last_error = f"{method} {path}: {response.status_code} {response.text[:200]}"
            return {}
        body = response.json()
        return body if isinstance(body, dict) else {}


# -- sampling --------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """What is sampled, in what unit, and the slope allowed per 100 refreshes (``None``:
    shown, not judged)."""

    name: str
    column: str
    unit: str
    threshold: float | None
    note: str = ""


RSS = Resource("RSS", "RSS KiB", "KiB", RSS_KIB_PER_100)
FDS = Resource("open file descriptors", "fds", "", COUNT_PER_100)
THREADS = Resource("threads", "threads", "", COUNT_PER_100)
CONNECTIONS = Resource("database connections", "db conns", "", COUNT_PER_100)
WAL = Resource("SQLite WAL file", "WAL KiB", "KiB", WAL_KIB_PER_100)
ENTRIES = Resource("cache_entries rows", "entries", "", COUNT_PER_100)
RUNS = Resource(
    "cache_refresh_runs rows", "runs", "", None,
    "one per refresh; pruned at most hourly per process (CACHE_REFRESHER_RUNS_KEEP_DAYS)",
)  # fmt: skip
REQUESTS = Resource("cache_refresh_requests rows", "requests", "", None, "one per queued refresh")
TRACED = Resource("traced by tracemalloc", "traced KiB", "KiB", TRACED_KIB_PER_100)
OBJECTS = Resource(
    "objects the collector tracks", "objects", "", None, "swings with the refreshes in flight"
)
MALLOC_USED = Resource("malloc in use (glibc)", "malloc KiB", "KiB", RSS_KIB_PER_100)
MALLOC_FREE = Resource("malloc free in its arenas", "free KiB", "KiB", None, "fragmentation")


@dataclass(frozen=True)
class Sample:
    seconds: float
    refreshes: int
    cpu: float
    values: dict[Resource, float]


class Sampler:
    """Reads the service's resources: ``/proc``, its database, ``/metrics``, the probe."""

    def __init__(self, service: Service, engine: Engine, *, probe: Path | None) -> None:
        self.service = service
        self.engine = engine
        self.probe = probe
        self.pid = service.process.pid
        self.sqlite = engine.dialect.name == "sqlite"
        self.db_path = os.path.realpath(engine.url.database or "") if self.sqlite else ""
        self.started = time.monotonic()

    def sample(self, client: httpx.Client) -> Sample:
        values: dict[Resource, float] = {}
        status = self._status()
        values[RSS] = status["VmRSS"]
        values[THREADS] = status["Threads"]
        fds = self._fds()
        values[FDS] = len(fds)
        values.update(self._database(fds))
        values.update(self._probed())
        return Sample(
            time.monotonic() - self.started, self._refreshes(client), cpu_seconds(self.pid), values
        )

    def _status(self) -> dict[str, float]:
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "Threads"):
                fields[name] = float(value.split()[0])  # VmRSS in kB
        return fields

    def _fds(self) -> list[str]:
        directory = Path(f"/proc/{self.pid}/fd")
        targets = []
        for entry in directory.iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                targets.append(os.readlink(entry))
        return targets

    def _database(self, fds: list[str]) -> dict[Resource, float]:
        values: dict[Resource, float] = {}
        with self.engine.connect() as conn:
            for resource, table in (
                (ENTRIES, "cache_entries"), (RUNS, "cache_refresh_runs"),
                (REQUESTS, "cache_refresh_requests"),
            ):  # fmt: skip
                values[resource] = conn.exec_driver_sql(
                    f"SELECT count(*) FROM {table}"
                ).scalar_one()
            if not self.sqlite:
                values[CONNECTIONS] = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).scalar_one()
        if self.sqlite:
            values[CONNECTIONS] = sum(1 for target in fds if target == self.db_path)
            wal = Path(f"{self.db_path}-wal")
            values[WAL] = wal.stat().st_size / 1024 if wal.exists() else 0.0
        return values

    def _probed(self) -> dict[Resource, float]:
        if self.probe is None or not self.probe.exists():
            return {}
        lines = self.probe.read_text().splitlines()
        if not lines:
            return {}
        last = json.loads(lines[-1])
        values = {OBJECTS: last["objects"]}
        if "traced" in last:
            values[TRACED] = last["traced"] / 1024
        if "malloc_used" in last:
            values[MALLOC_USED] = last["malloc_used"] / 1024
            values[MALLOC_FREE] = last["malloc_free"] / 1024
        return values

    def _refreshes(self, client: httpx.Client) -> int:
        """Refreshes done so far: the counts of the refresh duration histogram."""
        text = client.get(f"{self.service.base}/metrics", timeout=30).text
        return int(sum(float(value) for value in REFRESH_COUNT.findall(text)))


REFRESH_COUNT = re.compile(r"^cache_refresher_refresh_duration_seconds_count\{[^}]*\} (\S+)$", re.M)


def soak(
    service: Service, sampler: Sampler, reader: Reader, args: argparse.Namespace
) -> list[Sample]:
    """Samples every ``--sample`` seconds for ``--minutes``, or until the service exits."""
    samples: list[Sample] = []
    deadline = time.monotonic() + args.minutes * 60
    next_log = 0.0
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline and service.process.poll() is None:
            try:
                samples.append(sampler.sample(client))
            except (OSError, httpx.HTTPError, sa.exc.SQLAlchemyError) as exc:
                log(f"sample failed: {type(exc).__name__}: {exc}")
            if samples and samples[-1].seconds >= next_log:
                next_log = samples[-1].seconds + 30
                log(progress(samples[-1], reader.reads))
            time.sleep(max(0.0, min(args.sample, deadline - time.monotonic())))
    return samples


def progress(sample: Sample, reads: Reads) -> str:
    shown = ", ".join(f"{r.name} {shown_value(r, v)}" for r, v in sample.values.items())
    return (
        f"{sample.seconds:5.0f} s, {sample.refreshes} refreshes, {shown}; "
        f"{sum(reads.statuses.values())} requests ({reads.failed} failed)"
    )


def shown_value(resource: Resource, value: float) -> str:
    if resource.unit == "KiB":
        return f"{value / 1024:.1f} MiB" if value >= 10 * 1024 else f"{value:.0f} KiB"
    return f"{value:,.0f}"


# -- verdicts --------------------------------------------------------------------------


def slope_per_100(points: Sequence[tuple[float, float]]) -> float | None:
    """Theil-Sen: the median of the slopes between every two points, per 100 on x."""
    slopes = [
        (y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in itertools.combinations(points, 2) if x2 > x1
    ]
    return 100 * statistics.median(slopes) if slopes else None


def verdicts(samples: list[Sample], warmup: float) -> list[Check]:
    settled = [s for s in samples if s.seconds >= warmup]
    if len(settled) < 3:
        return [("samples after warm-up", False, f"{len(settled)} (need 3 or more)")]
    checks: list[Check] = []
    for resource in settled[-1].values:
        points = [(s.refreshes, s.values[resource]) for s in settled if resource in s.values]
        slope = slope_per_100(points)
        first, last = points[0][1], points[-1][1]
        top = max(value for _, value in points)
        unit = f" {resource.unit}" if resource.unit else ""
        figure = (
            f"{'n/a' if slope is None else f'{slope:+.2f}'}{unit} per 100 refreshes "
            f"(limit {resource.threshold:g}); {shown_value(resource, first)} -> "
            f"{shown_value(resource, last)}, max {shown_value(resource, top)}"
            if resource.threshold is not None
            else f"{'n/a' if slope is None else f'{slope:+.1f}'} per 100 refreshes; "
            f"{shown_value(resource, first)} -> {shown_value(resource, last)} ({resource.note})"
        )
        ok = (
            None
            if resource.threshold is None
            else slope is not None and slope <= resource.threshold
        )
        checks.append((resource.name, ok, figure))
    return checks


SERIES_HEADER = ["t (s)", "refreshes", "CPU s"]


def series(samples: list[Sample], rows: int = 12) -> tuple[list[str], list[list[str]]]:
    """The samples over time, about ``rows`` of them, evenly spread, the last included."""
    step = max(1, len(samples) // rows)
    chosen = samples[::step]
    if chosen[-1] is not samples[-1]:
        chosen.append(samples[-1])
    resources = list(samples[-1].values)
    header = [*SERIES_HEADER, *(r.column for r in resources)]
    table = [
        [
            f"{s.seconds:.0f}",
            f"{s.refreshes:,}",
            f"{s.cpu:.0f}",
            *(f"{s.values[r]:,.0f}" if r in s.values else "" for r in resources),
        ]
        for s in chosen
    ]
    return header, table


@dataclass
class Outcome:
    """Everything a run found, for the report."""

    samples: list[Sample]
    reads: Reads
    exit_code: int | None
    stop_seconds: float
    log_lines: Counter[str]
    grown: list[list[Any]]


def service_log(procs: Processes) -> Counter[str]:
    """The service's warnings, errors and tracebacks, counted by message (its first 120
    characters, times and numbers left out)."""
    path = procs.logs / "service.log"
    lines: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
        if any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")):
            message = re.sub(r"^\S+ \S+ ", "", line)
            lines[re.sub(r"\d+(\.\d+)?", "N", message)[:120]] += 1
    return lines


def probe_growth(probe: Path | None) -> list[list[Any]]:
    if probe is None or not probe.exists():
        return []
    lines = probe.read_text().splitlines()
    if not lines:
        return []
    grown: list[list[Any]] = json.loads(lines[-1]).get("grown") or []
    return grown


def shown_path(where: str) -> str:
    """A source line's path without this machine's directories."""
    for prefix, shown in ((sys.prefix, "<venv>"), (sys.base_prefix, "<python>"), (REPO, "")):
        where = where.replace(f"{prefix}{os.sep}", shown and f"{shown}{os.sep}")
    return where


def report(
    outcome: Outcome, args: argparse.Namespace, info: list[tuple[str, str]], command: str
) -> str:
    markdown = args.markdown
    samples = outcome.samples
    header, table = series(samples)
    checks = verdicts(samples, args.warmup)
    reads = outcome.reads
    statuses = ", ".join(
        f"{status or 'no answer'}: {n:,}" for status, n in sorted(reads.statuses.items())
    )
    facts = [
        ("command", f"`{command}`" if markdown else command),
        ("duration", f"{samples[-1].seconds:.0f} s sampled every {args.sample:g} s, warm-up "
         f"{args.warmup:g} s; {samples[-1].refreshes:,} refreshes "
         f"({samples[-1].refreshes / max(samples[-1].seconds, 1):.2f}/s)"),
        ("reads", f"{sum(reads.statuses.values()):,} requests ({statuses}); "
         f"{reads.queued} refreshes queued"),
        ("stop", f"exit code {outcome.exit_code} after {outcome.stop_seconds:.1f} s (SIGTERM)"),
    ]  # fmt: skip
    if reads.last_error:
        facts.append(("last read failure", reads.last_error))
    logged = sum(outcome.log_lines.values())
    facts.append(("service log", f"{logged} warnings/errors" + (":" if logged else "")))
    out: list[str] = []
    if markdown:
        today = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        out += [f"### Run of {today}: {args.engine}", "", "| | |", "|---|---|"]
        out += [f"| {key} | {value} |" for key, value in [*info, *facts]]
        out += [f"| | {n} x {message} |" for message, n in outcome.log_lines.most_common(8)]
        out += ["", *markdown_table(header, table, checks)]
    else:
        out.append("Machine and run")
        out += [f"  {key:<22} {value}" for key, value in [*info, *facts]]
        out += [f"    {n} x {message}" for message, n in outcome.log_lines.most_common(8)]
        out += [
            "",
            "Over time (after warm-up, slopes against refreshes)",
            *text_table(header, table, checks),
        ]
    if outcome.grown:
        out += ["", "Python allocations grown most since the warm-up (tracemalloc, by line):", ""]
        out += [
            f"    {size / 1024:+,.1f} KiB {count:+,} blocks  {shown_path(where)}"
            for where, size, count in outcome.grown
        ]
    return "\n".join(out)


# -- entry point -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/soak.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=4.0, help="how long to drive it")
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--interval", type=float, default=1.0, help="dev --interval (>= 1)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds not judged")
    parser.add_argument("--reads", type=float, default=4.0, help="API requests per second")
    parser.add_argument(
        "--probe", choices=("malloc", "tracemalloc"),
        help="run the service under bench/soak_probe.py: glibc malloc's bytes in use and "
        "free, object counts (cheap); with tracemalloc, the Python allocations too",
    )  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="print a RESULTS.md section")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.interval < 1 or args.minutes <= 0 or args.sample <= 0 or args.reads <= 0:
        _parser().error("use --interval >= 1 and positive --minutes, --sample and --reads")
    command = " ".join(["python bench/soak.py", *(argv if argv is not None else sys.argv[1:])])
    signal.signal(signal.SIGTERM, _interrupt)  # stop what was started, then exit
    with tempfile.TemporaryDirectory(prefix="soak-") as directory, contextlib.ExitStack() as stack:
        workdir = Path(directory)
        procs = Processes(workdir)
        url = stack.enter_context(database(args, workdir))
        stack.callback(procs.stop_all)
        log(f"starting cache-refresher dev ({args.engine}, --interval {args.interval:g})...")
        service = start_service(procs, args, workdir, url)
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        stack.callback(engine.dispose)
        info = machine_info({args.engine: engine})
        probe = workdir / "probe.jsonl" if args.probe else None
        sampler = Sampler(service, engine, probe=probe)
        try:
            with Reader(service, args.reads) as reader:
                log(f"soaking for {args.minutes:g} min: {service.base}")
                samples = soak(service, sampler, reader, args)
        finally:
            stopping = time.monotonic()
            procs.stop(service.process, STOP_SECONDS)
            stopped = time.monotonic() - stopping
        if not samples:
            log(f"no samples:\n{procs.log_tail('service', 30)}")
            return 1
        outcome = Outcome(
            samples, reader.reads, service.process.returncode, stopped, service_log(procs),
            probe_growth(probe),
        )  # fmt: skip
        print(report(outcome, args, info, command))
        checks = verdicts(samples, args.warmup)
        return 0 if all(ok is not False for _, ok, _ in checks) else 1


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
