"""Benchmark of the item route, ``GET /v1/namespaces/{ns}/items/{key}``, against its ceiling
and Datasette, idle and while the namespace is refreshed.

Run: ``python bench/api_load.py [--duration 10] [--rounds 3] [--connections 32] [--items 100000]
[--tokens 300] [--targets ceiling,api,datasette,refresh,refresh-all]``
(``--duration 3 --rounds 1 --items 20000`` for a quick look). Needs ``wrk`` and
``taskset`` (Debian: ``apt-get install -y wrk util-linux``) and Datasette
(``pip install -e '.[bench]'``); exits 2 naming the command when one is missing.

What one run does, everything in a temporary directory, every server on
127.0.0.1 and stopped by its PID at the end:

1. starts a devstack in its own process (``bench/api_issuer.py``) whose Entra ID
   issuer mints ``--tokens`` access tokens for a benchmark API audience: user
   tokens with ``scp: Cache.Read`` and app tokens with the ``Cache.Read.All``
   role;
2. fills the namespace ``bench`` of a SQLite file with ``--items`` items of
   ~500-byte JSON payloads through ``CacheStore.apply`` (``bench/refresh.py``'s
   generator);
3. starts each target as its own uvicorn process (``bench/api_targets.py``: one
   worker, the same ``--loop`` and ``--http``, no access log), pinned to CPU 0:

   - **ceiling**: a FastAPI route of the same path shape answering a constant
     JSON body of an item's size, no auth, no storage;
   - **api**: our app from ``create_app(settings)``, its lifespan opening the
     store on the SQLite file and the token validator on the devstack issuer
     (OpenID configuration, JWKS) exactly as ``cache-refresher api`` does;
     every request carries a bearer token that is validated;
   - **datasette**: Datasette's ASGI app over the same file (mutable, facet
     suggestions off), reading one row's payload by its primary key through
     its JSON API: ``/cache.json?sql=select payload ... where namespace = :ns
     and key = :key&_shape=array``, its fastest way to one row here (the row
     URL, ``datasette-row``, and the filtered table, ``datasette-table``, can
     be added to ``--targets`` to compare);

4. runs ``wrk`` pinned to CPU 1 (one thread, ``--connections`` connections,
   ``--duration`` seconds, ``bench/api_wrk.lua``: a random key of the
   ``--items`` and a random token per request, the same headers for every
   target) against each target in turn, ``--rounds`` times, the order rotated
   each round; the **refresh** and **refresh-all** targets are the api again
   while ``bench/api_refresh_loop.py`` (on CPU 1 with wrk: the server's core
   stays its own) applies the whole namespace over and over, ``--refresh-pause``
   apart (1 s: the shortest interval a namespace may have), a changed version
   and back, through ``CacheStore.apply`` in its own process: 1% of the items
   changed per refresh (the usual case: cost follows change), or all of them;
5. prints (as Markdown, for ``bench/RESULTS.md``) medians over the rounds of
   requests/s, p50 and p99 latency (wrk's), errors (wrk's socket errors plus
   responses >= 400, from its summary in a Lua ``done`` hook), the server's CPU
   use (and requests per CPU-second of it: robust to other processes taking
   the server's core), and the ratios the issue sets targets for.

The machine is usually shared: compare the ratios (measured in the same run,
rounds interleaved), not absolute figures, and read the per-round ranges.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

import api_profile
import httpx
from api_refresh_loop import fill

from refresher.namespaces import MIN_INTERVAL_SECONDS

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
NAMESPACE = "bench"
SERVER_CPU, LOAD_CPU = "0", "1"
START_SECONDS = 60.0
STOP_SECONDS = 15.0
REFRESH_STOP_SECONDS = 180.0

# Targets (issue 5, "Done when").
MIN_CEILING_RATIO = 0.75
MIN_DATASETTE_RATIO = 2.0
MAX_P99_RATIO = 2.0

INSTALL = {
    "wrk": "apt-get install -y wrk",
    "taskset": "apt-get install -y util-linux",
    "datasette": f"{sys.executable} -m pip install -e '.[bench]'   (or 'datasette>=0.65')",
}


@dataclass(frozen=True)
class Target:
    """One thing to load: which server, which path (``{key}`` marks the key)."""

    name: str
    label: str
    server: str
    path: str
    changed: float | None = None
    """For the targets loaded while the namespace is refreshed: the share of the items
    each refresh changes."""


ITEM_PATH = f"/v1/namespaces/{NAMESPACE}/items/{{key}}"
TARGETS = {
    "ceiling": Target("ceiling", "ceiling (constant JSON, no auth)", "ceiling", ITEM_PATH),
    "api": Target("api", "api (auth on)", "api", ITEM_PATH),
    # Datasette's fastest way to one row's payload (see the opt-in ones below): its SQL JSON
    # API with named parameters, one column, a plain array.
    "datasette": Target("datasette", "datasette (SQL JSON)", "datasette",
                        "/cache.json?sql=select+payload+from+cache_entries+where+namespace"
                        f"+%3D+%3Ans+and+key+%3D+%3Akey&ns={NAMESPACE}&key={{key}}&_shape=array"),
    # The api while another process refreshes the namespace back to back, each refresh
    # changing 1% of the items (cost follows change: the usual case) or all of them.
    "refresh": Target("refresh", "api during 1% refreshes", "api", ITEM_PATH, changed=0.01),
    "refresh-all": Target("refresh-all", "api during 100% refreshes", "api", ITEM_PATH,
                          changed=1.0),
    # Other ways to ask Datasette for one row (run only when named in --targets):
    "datasette-row": Target("datasette-row", "datasette (row JSON)", "datasette",
                            f"/cache/cache_entries/{NAMESPACE},{{key}}.json?_shape=array"),
    "datasette-table": Target("datasette-table", "datasette (table JSON, filtered)", "datasette",
                              f"/cache/cache_entries.json?namespace={NAMESPACE}&key={{key}}"
                              "&_shape=array&_nocount=1&_nofacet=1&_nosuggest=1"),
}  # fmt: skip
DEFAULT_TARGETS = ("ceiling", "api", "datasette", "refresh", "refresh-all")


class WrkSummary(TypedDict):
    """The ``BENCH_JSON`` line bench/api_wrk.lua's ``done`` hook prints."""

    requests: int
    duration_us: int
    bytes: int
    errors: dict[str, int]
    """connect, read, write, status (responses >= 400), timeout."""
    latency_us: dict[str, float]
    """p50, p90, p99, p999, max, mean."""


@dataclass(frozen=True)
class Sample:
    """One wrk run against one target."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    bytes_per_response: float
    server_cpu: float
    """The server process's CPU time over the run's wall time (1.0: one core)."""
    refreshes: int = 0

    @property
    def per_cpu(self) -> float:
        """Requests per CPU-second of the server: what it costs, whatever share of its
        core the machine's other processes left it."""
        return self.rps / max(self.server_cpu, 1e-9)


@dataclass
class Results:
    """Every sample of every target, in the order measured."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def add(self, target: str, sample: Sample) -> None:
        self.samples.setdefault(target, []).append(sample)

    def median(self, target: str, attribute: str) -> float:
        return statistics.median(self.values(target, attribute))

    def spread(self, target: str, attribute: str) -> tuple[float, float]:
        values = self.values(target, attribute)
        return min(values), max(values)

    def values(self, target: str, attribute: str) -> list[float]:
        """``attribute`` (a numeric field or property of :class:`Sample`) of every sample."""
        return [float(getattr(s, attribute)) for s in self.samples[target]]

    def paired(self, top: str, bottom: str, attribute: str) -> list[float]:
        """Per-round ratios ``top / bottom`` (rounds are interleaved, so pairs share noise)."""
        return [
            getattr(a, attribute) / getattr(b, attribute)
            for a, b in zip(self.samples[top], self.samples[bottom], strict=False)
        ]


# -- processes -----------------------------------------------------------------------


class Processes:
    """The processes this run started, stopped by PID (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: str | None,
        env: dict[str, str],
        stdout_pipe: bool = False,
        cwd: Path = REPO,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` (pinned to ``cpu`` with taskset) in ``cwd``, its stderr to a log file."""
        command = [*(["taskset", "-c", cpu] if cpu is not None else []), *argv]
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
        )
        log.close()
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = STOP_SECONDS) -> None:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The next line ``process`` prints, or '' when it exits or ``timeout`` passes."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().decode().strip() if ready else ""


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def base_env() -> dict[str, str]:
    """This process's environment without any service or Azure setting a user may have set."""
    inherited = dict(os.environ)  # noqa: TID251 (a benchmark driver passes it on to children)
    return {
        name: value
        for name, value in inherited.items()
        if not name.startswith(("CACHE_REFRESHER_", "AZURE_"))
    }


# -- setting up ------------------------------------------------------------------------


@dataclass(frozen=True)
class Issuer:
    authority_host: str
    tenant_id: str
    ca_path: str
    audiences: list[str]
    tokens: list[str]


def start_issuer(procs: Processes, work: Path, count: int) -> Issuer:
    """The devstack issuer process, its tokens minted and written."""
    out = work / "issuer.json"
    argv = [
        sys.executable,
        str(BENCH / "api_issuer.py"),
        "--dir",
        str(work / "devstack"),
        "--out",
        str(out),
        "--tokens",
        str(count),
    ]
    process = procs.start("issuer", argv, cpu=LOAD_CPU, env=base_env(), stdout_pipe=True)
    if read_line(process, START_SECONDS) != "ready":
        raise SystemExit(f"the devstack issuer did not start:\n{procs.log_tail('issuer')}")
    return Issuer(**json.loads(out.read_text()))


def api_env(
    issuer: Issuer, database_url: str, namespaces_file: Path, overrides: Sequence[str] = ()
) -> dict[str, str]:
    """The settings of the api target: our store on the file, callers' tokens from devstack
    (and ``NAME=VALUE`` overrides of other settings)."""
    extra = dict(f"CACHE_REFRESHER_{item}".split("=", 1) for item in overrides)
    return {
        **base_env(),
        "CACHE_REFRESHER_DATABASE_URL": database_url,
        "CACHE_REFRESHER_NAMESPACES_FILE": str(namespaces_file),
        "AZURE_AUTHORITY_HOST": issuer.authority_host,
        "CACHE_REFRESHER_CA_BUNDLE": issuer.ca_path,
        "CACHE_REFRESHER_API_TENANTS": issuer.tenant_id,
        "CACHE_REFRESHER_API_AUDIENCES": ",".join(issuer.audiences),
        "CACHE_REFRESHER_LOG_LEVEL": "WARNING",
        **extra,
    }


NAMESPACES_TOML = f"""\
# The benchmark's namespace: filled and refreshed by bench/api_load.py itself.
[namespaces.{NAMESPACE}]
key_field = "id"
every = 3600.0
source = {{ kind = "demo" }}
"""


@dataclass
class Server:
    target: str
    port: int
    process: subprocess.Popen[bytes]


def start_server(
    procs: Processes, server: str, args: argparse.Namespace, env: dict[str, str], extra: list[str]
) -> Server:
    port = free_port()
    # -P: without bench/ on sys.path; the target imports only the service's packages.
    argv = [
        sys.executable,
        "-P",
        str(BENCH / "api_targets.py"),
        server,
        "--port",
        str(port),
        "--loop",
        args.loop,
        "--http",
        args.http,
        *extra,
    ]
    process = procs.start(server, argv, cpu=SERVER_CPU, env=env)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2.0)
            return Server(server, port, process)
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"the {server} server did not start:\n{procs.log_tail(server)}")


def check_target(server: Server, target: Target, tokens: list[str]) -> int:
    """GET three keys as wrk will; raise unless each is a 200 with JSON. The body size."""
    sizes = []
    for n in (0, 1, 2):
        url = f"http://127.0.0.1:{server.port}{target.path.format(key=f'item-{n:07d}')}"
        response = httpx.get(url, headers={"Authorization": f"Bearer {tokens[n]}"}, timeout=10)
        if response.status_code != 200:
            raise SystemExit(
                f"{target.name}: GET {url.split(str(server.port), 1)[1]} answered "
                f"{response.status_code}: {response.text[:500]}"
            )
        response.json()
        sizes.append(len(response.content))
    return int(statistics.median(sizes))


# -- measuring -------------------------------------------------------------------------


def run_wrk(
    server: Server,
    target: Target,
    args: argparse.Namespace,
    tokens_file: Path,
    duration: float,
    seed: int,
) -> tuple[WrkSummary, float]:
    """wrk's summary of one run, and the server's CPU use (cores) over it."""
    template = target.path.replace("%", "%%").replace("{key}", "%s")
    argv = [
        "taskset",
        "-c",
        LOAD_CPU,
        "wrk",
        "-t1",
        f"-c{args.connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "-s",
        str(BENCH / "api_wrk.lua"),
        f"http://127.0.0.1:{server.port}",
        "--",
        template,
        str(tokens_file),
        str(args.key_space or args.items),
        str(seed),
    ]
    cpu, wall = cpu_seconds(server.process.pid), time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    used = (cpu_seconds(server.process.pid) - cpu) / (time.monotonic() - wall)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            summary: WrkSummary = json.loads(line.removeprefix("BENCH_JSON "))
            return summary, used
    raise SystemExit(f"wrk gave no summary (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def sample_of(summary: WrkSummary, cpu: float, refreshes: int = 0) -> Sample:
    requests = summary["requests"]
    latency = summary["latency_us"]
    return Sample(
        rps=requests / (summary["duration_us"] / 1e6),
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        errors=sum(summary["errors"].values()),
        bytes_per_response=summary["bytes"] / max(requests, 1),
        server_cpu=cpu,
        refreshes=refreshes,
    )


@contextmanager
def refreshing(
    procs: Processes, database_url: str, args: argparse.Namespace, changed: float, first: int
) -> Iterator[dict[str, float]]:
    """The refresh loop running (from 'ready' on) for the block; its summary after."""
    argv = [
        sys.executable,
        str(BENCH / "api_refresh_loop.py"),
        "--database-url",
        database_url,
        "--namespace",
        NAMESPACE,
        "--items",
        str(args.items),
        "--changed-fraction",
        str(changed),
        "--first",
        str(first),
        "--pause",
        str(args.refresh_pause),
    ]
    process = procs.start("refresh", argv, cpu=LOAD_CPU, env=base_env(), stdout_pipe=True)
    summary: dict[str, float] = {}
    if read_line(process, START_SECONDS) != "ready":
        raise SystemExit(f"the refresh loop did not start:\n{procs.log_tail('refresh')}")
    try:
        yield summary
    finally:
        os.kill(process.pid, signal.SIGTERM)
        line = read_line(process, REFRESH_STOP_SECONDS)
        procs.stop(process)
        summary.update(json.loads(line) if line.startswith("{") else {})


def measure(
    procs: Processes,
    servers: dict[str, Server],
    targets: list[Target],
    args: argparse.Namespace,
    tokens_file: Path,
    database_url: str,
) -> Results:
    """Warm every target up, then ``--rounds`` rounds of each, the order rotated per round."""
    results = Results()
    state = {"first": 0}  # which version the refresh loop applies first (see its --first)

    def one(target: Target, duration: float, seed: int) -> Sample:
        server = servers[target.server]
        if target.changed is None:
            return sample_of(*run_wrk(server, target, args, tokens_file, duration, seed))
        with refreshing(procs, database_url, args, target.changed, state["first"]) as summary:
            wrk_summary, cpu = run_wrk(server, target, args, tokens_file, duration, seed)
        refreshes = int(summary.get("refreshes", 0))
        state["first"] = (state["first"] + refreshes) % 2
        return sample_of(wrk_summary, cpu, refreshes)

    for target in targets:
        if target.changed is None and args.warmup > 0:
            one(target, args.warmup, seed=0)
            log(f"warmed up {target.name}")
    for round_ in range(args.rounds):
        for target in targets[round_ % len(targets) :] + targets[: round_ % len(targets)]:
            time.sleep(args.pause)
            sample = one(target, args.duration, seed=1 + round_)
            results.add(target.name, sample)
            log(
                f"round {round_ + 1}/{args.rounds} {target.name:<11} {sample.rps:8.0f} req/s  "
                f"p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms  "
                f"errors {sample.errors}  server CPU {sample.server_cpu:.2f}"
                + ("" if target.changed is None else f"  refreshes {sample.refreshes}")
            )
    return results


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -- reporting -------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**fail**"


@dataclass(frozen=True)
class Ratio:
    """``top``'s median over ``bottom``'s, and the bound the issue sets on it (if any)."""

    label: str
    top: str
    bottom: str
    attribute: str = "rps"
    at_least: float | None = None
    at_most: float | None = None

    def judge(self, value: float) -> bool | None:
        if self.at_least is not None:
            return value >= self.at_least
        if self.at_most is not None:
            return value <= self.at_most
        return None

    @property
    def bound(self) -> str:
        if self.at_least is not None:
            return f">= {self.at_least}x"
        return "-" if self.at_most is None else f"<= {self.at_most}x"


RATIOS = (
    Ratio("api req/s / ceiling req/s", "api", "ceiling", at_least=MIN_CEILING_RATIO),
    Ratio("api req/s / Datasette req/s", "api", "datasette", at_least=MIN_DATASETTE_RATIO),
    Ratio(
        "api p99 during 1% refreshes / idle p99", "refresh", "api", "p99_ms", at_most=MAX_P99_RATIO
    ),
    Ratio(
        "api p99 during 100% refreshes / idle p99",
        "refresh-all",
        "api",
        "p99_ms",
        at_most=MAX_P99_RATIO,
    ),
    Ratio("api req/s during 1% refreshes / idle", "refresh", "api"),
    Ratio("api req/s during 100% refreshes / idle", "refresh-all", "api"),
    Ratio("api / ceiling, requests per server CPU-second", "api", "ceiling", "per_cpu"),
    Ratio("api / Datasette, requests per server CPU-second", "api", "datasette", "per_cpu"),
    Ratio("Datasette req/s / ceiling req/s", "datasette", "ceiling"),
    Ratio("api req/s / Datasette (row JSON) req/s", "api", "datasette-row"),
    Ratio("api req/s / Datasette (table JSON) req/s", "api", "datasette-table"),
)


def ratio_row(results: Results, ratio: Ratio) -> str:
    value = results.median(ratio.top, ratio.attribute) / results.median(
        ratio.bottom, ratio.attribute
    )
    pairs = results.paired(ratio.top, ratio.bottom, ratio.attribute)
    spread = f"{min(pairs):.2f}-{max(pairs):.2f}x" if pairs else "-"
    judged = ratio.judge(value)
    verdict_text = "-" if judged is None else verdict(judged)
    return f"| {ratio.label} | {value:.2f}x | {spread} | {ratio.bound} | {verdict_text} |"


def report(results: Results, targets: list[Target], sizes: dict[str, int]) -> list[str]:
    """The figures as Markdown: one table of targets, one of the ratios with their targets."""
    lines = [
        "| target | req/s (min-max) | p50 ms | p99 ms (min-max) | errors | server CPU | "
        "req per CPU-s | body bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        if target.name not in results.samples:
            continue
        low, high = results.spread(target.name, "rps")
        p99_low, p99_high = results.spread(target.name, "p99_ms")
        errors = sum(s.errors for s in results.samples[target.name])
        lines.append(
            f"| {target.label} | {results.median(target.name, 'rps'):,.0f} "
            f"({low:,.0f}-{high:,.0f}) | {results.median(target.name, 'p50_ms'):.2f} | "
            f"{results.median(target.name, 'p99_ms'):.2f} ({p99_low:.2f}-{p99_high:.2f}) | "
            f"{errors} | {results.median(target.name, 'server_cpu'):.2f} | "
            f"{results.median(target.name, 'per_cpu'):,.0f} | {sizes.get(target.name, 0)} |"
        )
    measured = results.samples
    lines += ["", "| ratio (of medians) | value | per round | target | |", "|---|---|---|---|---|"]
    for ratio in RATIOS:
        if ratio.top in measured and ratio.bottom in measured:
            lines.append(ratio_row(results, ratio))
    errors = sum(s.errors for samples in measured.values() for s in samples)
    lines.append(f"| errors (all targets, all rounds) | {errors} | | 0 | {verdict(errors == 0)} |")
    return lines


def machine(args: argparse.Namespace) -> list[str]:
    """What was measured where: commit, CPU, versions, settings, load."""
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = " (working tree with uncommitted changes)" if _git("status", "--porcelain") else ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("fastapi", "starlette", "uvicorn", "datasette", "pyjwt")
    )
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return [
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}{dirty}",
        f"- {os.cpu_count()} CPUs ({model}); Python {platform.python_version()}; {versions}; "
        f"{(wrk.stdout or wrk.stderr).split(' Copyright')[0].strip()}",
        f"- uvicorn --loop {args.loop} --http {args.http}, one worker, no access log; server on "
        f"CPU {SERVER_CPU}, wrk (-t1) and the refresh loop on CPU {LOAD_CPU}",
        f"- {args.items:,} items, {args.tokens} tokens, {args.connections} connections, "
        f"{args.duration:g} s per run, {args.rounds} rounds (after {args.warmup:g} s of warm-up "
        f"per target); refreshes under load {args.refresh_pause:g} s apart",
        f"- load average at start/end: {args.load_start} / {_load()}",
    ]


def _git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# -- entry point -----------------------------------------------------------------------


def missing_tools(targets: list[Target]) -> list[str]:
    """The install command of each missing tool the run needs."""
    missing = [INSTALL[tool] for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if any(target.server == "datasette" for target in targets):
        try:
            importlib.metadata.version("datasette")
        except importlib.metadata.PackageNotFoundError:
            missing.append(INSTALL["datasette"])
    return missing


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/api_load.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each target")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per target first")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--tokens", type=int, default=300, help="distinct bearer tokens")
    parser.add_argument(
        "--key-space",
        type=int,
        default=0,
        help="diagnosis: draw keys from the first N items only (default: all)",
    )
    parser.add_argument(
        "--refresh-pause",
        type=float,
        default=MIN_INTERVAL_SECONDS,
        help="seconds between two refreshes under load (the shortest interval a namespace "
        "may have; 0: back to back)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, of {', '.join(TARGETS)}",
    )
    parser.add_argument("--loop", default="asyncio", help="uvicorn --loop, for every target")
    parser.add_argument("--http", default="h11", help="uvicorn --http, for every target")
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="instead of the rounds: load the api this long under py-spy (or the first of "
        "--targets if it is an api target: refresh, refresh-all), print where its time goes",
    )
    parser.add_argument(
        "--api-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a CACHE_REFRESHER_ setting of the api target (repeatable), e.g. "
        "API_READ_CACHE_ITEMS=100000",
    )
    parser.add_argument(
        "--profile-output", type=Path, help="also keep py-spy's collapsed stacks in this file"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.load_start = _load()
    unknown = set(args.targets.split(",")) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown targets {sorted(unknown)}: choose from {', '.join(TARGETS)}")
    targets = [TARGETS[name] for name in args.targets.split(",")]
    if args.profile > 0:
        first = TARGETS[args.targets.split(",")[0]]
        targets = [first if first.server == "api" else TARGETS["api"]]
    missing = missing_tools(targets)
    if args.profile > 0 and api_profile.py_spy() is None:
        missing.append(f"{sys.executable} -m {api_profile.PY_SPY_INSTALL}")
    if missing:
        print("bench/api_load.py needs tools that are missing; install them with:", file=sys.stderr)
        print("\n".join(f"  {command}" for command in missing), file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        log("fewer than 2 CPUs: the server and wrk share one, figures mean little")
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp, ExitStack() as running:
        work = Path(tmp)
        procs = Processes(work)
        running.callback(procs.stop_all)
        results, sizes = run(procs, work, targets, args)
    if args.profile > 0:
        return 0
    lines = report(results, targets, sizes)
    print("\n".join([*machine(args), "", *lines]))
    return 0


def run(
    procs: Processes, work: Path, targets: list[Target], args: argparse.Namespace
) -> tuple[Results, dict[str, int]]:
    """Start the issuer and the servers the targets need, check them, measure."""
    issuer = start_issuer(procs, work, args.tokens)
    tokens_file = work / "tokens.txt"
    tokens_file.touch(mode=0o600)
    tokens_file.write_text("\n".join(issuer.tokens) + "\n")
    database = work / "cache.db"
    database_url = f"sqlite:///{database}"
    started = time.monotonic()
    fill(database_url, NAMESPACE, args.items)
    log(f"filled {args.items:,} items in {time.monotonic() - started:.1f} s")
    body = work / "body.json"
    body.write_bytes(median_payload(database))
    namespaces_file = work / "namespaces.toml"
    namespaces_file.write_text(NAMESPACES_TOML)
    extra = {
        "ceiling": (base_env(), ["--body-file", str(body)]),
        "api": (api_env(issuer, database_url, namespaces_file, args.api_setting), []),
        "datasette": (base_env(), ["--database", str(database)]),
    }
    servers: dict[str, Server] = {}
    sizes: dict[str, int] = {}
    for target in targets:
        if target.server not in servers:
            env, more = extra[target.server]
            servers[target.server] = start_server(procs, target.server, args, env, more)
            log(f"{target.server} serving on port {servers[target.server].port}")
        sizes[target.name] = check_target(servers[target.server], target, issuer.tokens)
    if args.profile > 0:
        profile(procs, servers["api"], targets[0], args, tokens_file, database_url)
        return Results(), sizes
    return measure(procs, servers, targets, args, tokens_file, database_url), sizes


def profile(
    procs: Processes,
    server: Server,
    target: Target,
    args: argparse.Namespace,
    tokens_file: Path,
    database_url: str,
) -> None:
    """Warm the api up, then load it for ``--profile`` seconds under py-spy (while the
    refresh loop runs, for the refresh target); print where the server's time went."""
    run_wrk(server, TARGETS["api"], args, tokens_file, args.warmup or 3.0, seed=0)
    out = procs.logs / "profile.txt"
    with ExitStack() as during:
        if target.changed is not None:
            during.enter_context(refreshing(procs, database_url, args, target.changed, first=0))
        recorder = api_profile.record(server.process.pid, args.profile, out, cpu=LOAD_CPU)
        summary, cpu = run_wrk(server, target, args, tokens_file, args.profile, seed=1)
        _, errors = recorder.communicate(timeout=args.profile + 60)
    sample = sample_of(summary, cpu)
    log(f"under py-spy: {sample.rps:.0f} req/s, p99 {sample.p99_ms:.2f} ms, CPU {cpu:.2f}")
    if recorder.returncode != 0 or not out.exists():
        raise SystemExit(f"py-spy failed: {errors.decode(errors='replace')[-2000:]}")
    if args.profile_output is not None:
        shutil.copyfile(out, args.profile_output)
        log(f"collapsed stacks (flamegraph.pl, speedscope) in {args.profile_output}")
    print("\n".join(api_profile.summarize(out)))


def median_payload(database: Path) -> bytes:
    """The payload of median length among the first 1,000 items: the ceiling's body."""
    with sqlite3.connect(database) as conn:
        rows = conn.execute(
            "SELECT payload FROM cache_entries WHERE namespace = ? ORDER BY key LIMIT 1000",
            (NAMESPACE,),
        ).fetchall()
    payloads = sorted((row[0] for row in rows), key=len)
    return str(payloads[len(payloads) // 2]).encode()


if __name__ == "__main__":
    raise SystemExit(main())
