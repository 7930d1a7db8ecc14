"""Benchmark of CacheStore.apply against a raw driver baseline, on SQLite and PostgreSQL.

Run: ``python bench/refresh.py [--engines sqlite,postgresql] [--items 100000]
[--repeats 3] [--postgres-url URL] [--markdown] [--profile]``.

Each repeat runs, in this order, on freshly created tables and a namespace of
its own (so every full load goes into an empty table):

- ``baseline``: plain DBAPI ``executemany`` (sqlite3 / psycopg, through the
  engine's raw connection, so with the same connection settings) of the
  precomputed rows into an empty table with ``cache_entries``' DDL under another
  name, in one transaction, commit included;
- ``raw COPY`` (PostgreSQL only; for comparison, not the baseline): the same
  rows with psycopg's ``COPY ... FROM STDIN`` into the same table, emptied
  after the baseline (untimed); the store uses ``COPY`` for large writes on
  PostgreSQL (``refresher.bulk.copy_rows``);
- ``full load``: ``store.apply(ns, items)`` into the empty namespace
  (serialisation and hashing included: that is the real cost);
- ``1% changed``: the same store, 1% of the items modified (a different 1% on
  each repeat);
- ``unchanged``: the same store, the same items again;
- ``1% changed, cold process``: a *new* CacheStore (no remembered etags, as
  after a restart), another 1% modified;
- ``1% changed, after another replica``: the first store again, another 1%
  modified, after the cold process's refresh (as when replicas take turns at a
  namespace): it brings what it remembers up to date from the rows written since.

On SQLite, WAL checkpoints run in a thread after the commit that makes them due
(``refresher.checkpointer``), for the baseline's connection and the store's alike:
no step's time includes one, each step starts after the one it set off has ended,
and the log and the "(not a target)" lines show how long it took.

Medians are reported (the machine this runs on is usually shared and noisy),
with min-max, plus the client process's CPU time to tell Python work from
waiting on the database. ``--profile`` runs one repeat under cProfile instead
and prints the top costs of the baseline, the full load and the 1% refreshes.

PostgreSQL runs in a schema of its own (``bench_<random>``, dropped at the
end); SQLite in a temporary directory (removed at the end).

``bench/upstream.py`` measures the whole upstream path (the ``http_json``
source against devstack's Graph-like API, then the store) with these engines.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import io
import os
import platform
import pstats
import random
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

import refresher
from refresher.cache import CacheStore, RefreshResult
from refresher.db import checkpointer_of, create_engine, init_schema
from refresher.schema import entries, metadata

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BASELINE_TABLE = "bench_baseline_entries"
CHANGED_FRACTION = 0.01
SEED = 20240601

# Targets (issue 2, "Done when").
FULL_LOAD_MIN_RATIO = 0.50  # full load rows/s >= 50% of the baseline's
REFRESH_MAX_TIME_RATIO = 0.10  # 1%-changed refresh <= 10% of the full load's time
WRITTEN_TOLERANCE = 0.5  # "~1%": within +-50% of 1% of the items

BASELINE = "raw executemany baseline"
RAW_COPY = "raw COPY (not the baseline)"
FULL = "full load (empty namespace)"
CHANGED = "1% changed"
UNCHANGED = "unchanged"
CHANGED_COLD = "1% changed, cold process"
CHANGED_REPLICA = "1% changed, after another replica"
# The same refreshes of a namespace compared by the items' own "version" field
# (CacheStore.apply(version_field=...)): unchanged items are not serialised.
V = " [by version]"
SCENARIOS = (
    BASELINE, RAW_COPY, FULL, CHANGED, UNCHANGED, CHANGED_COLD, CHANGED_REPLICA,
    FULL + V, CHANGED + V, UNCHANGED + V, CHANGED_COLD + V, CHANGED_REPLICA + V,
)  # fmt: skip

# fmt: off
_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
)
# fmt: on
_CATEGORIES = ("books", "garden", "kitchen", "toys", "tools", "audio", "office", "sports")
_WAREHOUSES = ("AMS-1", "FRA-2", "DUB-1", "PAR-3", "WAW-1")


# -- data ------------------------------------------------------------------------


def make_items(count: int, seed: int = SEED) -> list[dict[str, Any]]:
    """``count`` deterministic items, ~500 bytes of canonical JSON each."""
    rng = random.Random(seed)
    items = []
    for i in range(count):
        category = rng.randrange(len(_CATEGORIES))
        items.append(
            {
                "id": f"item-{i:07d}",
                "sku": f"SKU-{rng.randrange(16**8):08X}",
                "name": " ".join(rng.choices(_WORDS, k=3)).title(),
                "description": " ".join(rng.choices(_WORDS, k=20)),
                "category": {
                    "id": category,
                    "name": _CATEGORIES[category],
                    "path": ["catalogue", _CATEGORIES[category], rng.choice(_WORDS)],
                },
                "price": {"amount": round(rng.uniform(1, 500), 2), "currency": "EUR"},
                "stock": {
                    "warehouse": rng.choice(_WAREHOUSES),
                    "quantity": rng.randrange(1000),
                    "reserved": rng.randrange(50),
                },
                "tags": rng.sample(_WORDS, k=4),
                "active": rng.random() < 0.9,
                "rating": round(rng.uniform(1, 5), 1),
                "version": 1,
                "updated_at": f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
                f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
            }
        )
    return items


def with_changes(items: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A copy of ``items`` with 1% of them (chosen by ``seed``) given new content."""
    rng = random.Random(seed)
    changed = list(items)
    for index in rng.sample(range(len(items)), max(1, round(len(items) * CHANGED_FRACTION))):
        old = changed[index]
        changed[index] = {
            **old,
            "version": old["version"] + 1,
            "price": {**old["price"], "amount": round(rng.uniform(1, 500), 2)},
            "stock": {**old["stock"], "quantity": rng.randrange(1000)},
        }
    return changed


def baseline_rows(items: list[dict[str, Any]], engine: Engine) -> list[tuple[Any, ...]]:
    """The rows the baseline inserts: cache_entries' shape, bound as the store binds them."""
    now = datetime.now(UTC)
    dialect = engine.dialect
    processors = [
        column.type.dialect_impl(dialect).bind_processor(dialect) for column in entries.columns
    ]
    rows = []
    for item in items:
        payload = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
        values = (
            "bench-baseline",
            item["id"],
            payload.decode(),
            hashlib.sha256(payload).hexdigest(),
            1,
            now,
            None,  # source_version: content-compared namespaces store none
        )
        rows.append(
            tuple(
                value if process is None else process(value)
                for value, process in zip(values, processors, strict=True)
            )
        )
    return rows


# -- engines -----------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="bench-refresh-") as directory:
        engine = create_engine(f"sqlite:///{directory}/cache.db")
        try:
            yield engine
        finally:
            engine.dispose()


@contextlib.contextmanager
def postgresql_engine(url: str) -> Iterator[Engine]:
    admin = sa.create_engine(url, poolclass=sa.NullPool)
    schema = f"bench_{secrets.token_hex(6)}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        engine = create_engine(scoped.render_as_string(hide_password=False))
        try:
            yield engine
        finally:
            engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def reset_tables(engine: Engine) -> sa.Table:
    """Drop and recreate the cache tables and the baseline table; return the latter."""
    baseline_metadata = sa.MetaData()
    baseline = entries.to_metadata(baseline_metadata, name=BASELINE_TABLE)
    # Same DDL, but constraint and index names are per schema on PostgreSQL.
    named_items: list[sa.Constraint | sa.Index] = [*baseline.constraints, *baseline.indexes]
    for named in named_items:
        if isinstance(named.name, str):
            named.name = named.name.replace(entries.name, BASELINE_TABLE)
    baseline_metadata.drop_all(engine)
    metadata.drop_all(engine)
    init_schema(engine)
    baseline_metadata.create_all(engine)
    return baseline


def checkpointed(engine: Engine) -> float:
    """Seconds SQLite's background checkpoints of ``engine`` took so far, once the one
    under way (if any) has ended (``refresher.checkpointer``: a step's commit no longer
    waits for them, so they are counted apart)."""
    checkpointer = checkpointer_of(engine)
    if checkpointer is None:
        return 0.0
    checkpointer.wait()
    return checkpointer.seconds


def settle(engine: Engine) -> None:
    """Start each timed step from the same state: no garbage, SQLite's WAL checkpointed."""
    gc.collect()
    if engine.dialect.name == "sqlite":
        checkpointed(engine)  # the previous step's background checkpoint, if still running
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def raw_copy(engine: Engine, table: sa.Table, rows: Sequence[tuple[Any, ...]]) -> None:
    """For comparison on PostgreSQL (not the baseline): the same rows with psycopg's
    ``COPY ... FROM STDIN`` (``write_row``), one transaction, commit included."""
    columns = ", ".join(f'"{column.name}"' for column in table.columns)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f'COPY "{table.name}" ({columns}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
        raw.commit()
        cursor.close()
    finally:
        raw.close()


def empty(engine: Engine, table: sa.Table) -> None:
    with engine.begin() as conn:
        conn.execute(table.delete())


def raw_insert(engine: Engine, table: sa.Table, rows: Sequence[tuple[Any, ...]]) -> None:
    """The baseline: one transaction of plain DBAPI executemany, commit included."""
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    columns = ", ".join(f'"{column.name}"' for column in table.columns)
    marks = ", ".join(mark for _ in table.columns)
    sql = f'INSERT INTO "{table.name}" ({columns}) VALUES ({marks})'
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            # refresher's engine runs sqlite3 with isolation_level=None and BEGINs itself.
            cursor.execute("BEGIN")
        cursor.executemany(sql, rows)
        raw.commit()
        cursor.close()
    finally:
        raw.close()


# -- measuring ---------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    cpu_seconds: float
    written: int
    checkpoint_seconds: float = 0.0
    """SQLite: the background WAL checkpoint the step set off (not in ``seconds``)."""


@dataclass
class EngineResults:
    engine: str
    items: int
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {s: [] for s in SCENARIOS})

    @property
    def scenarios(self) -> list[str]:
        """The scenarios this engine ran (COPY only on PostgreSQL)."""
        return [scenario for scenario in SCENARIOS if self.samples[scenario]]

    def median(self, scenario: str) -> float:
        return statistics.median(s.seconds for s in self.samples[scenario])

    def cpu_median(self, scenario: str) -> float:
        return statistics.median(s.cpu_seconds for s in self.samples[scenario])

    def spread(self, scenario: str) -> tuple[float, float]:
        seconds = [s.seconds for s in self.samples[scenario]]
        return min(seconds), max(seconds)

    def written(self, scenario: str) -> int:
        return int(statistics.median(s.written for s in self.samples[scenario]))

    def rate(self, scenario: str) -> float:
        return self.items / self.median(scenario)


def timed(step: Callable[[], int]) -> Sample:
    wall, cpu = time.perf_counter(), time.process_time()
    written = step()
    return Sample(time.perf_counter() - wall, time.process_time() - cpu, written)


def applied(
    store: CacheStore,
    namespace: str,
    items: list[dict[str, Any]],
    version_field: str | None = None,
) -> Callable[[], int]:
    def step() -> int:
        result: RefreshResult = store.apply(namespace, items, version_field=version_field)
        return result.written

    return step


def run_engine(
    name: str, engine: Engine, items: list[dict[str, Any]], repeats: int, log: Callable[[str], None]
) -> EngineResults:
    results = EngineResults(name, len(items))
    rows = baseline_rows(items, engine)
    for repeat in range(repeats):
        baseline = reset_tables(engine)
        namespace = f"bench-{repeat}"
        changed = with_changes(items, SEED + 1 + repeat)
        changed_again = with_changes(changed, SEED + 1001 + repeat)
        changed_third = with_changes(changed_again, SEED + 2001 + repeat)

        def baseline_step(table: sa.Table = baseline) -> int:
            raw_insert(engine, table, rows)
            return len(rows)

        def copy_step(table: sa.Table = baseline) -> int:
            raw_copy(engine, table, rows)
            return len(rows)

        store = CacheStore(engine)
        versioned = f"{namespace}-by-version"
        steps = [
            (BASELINE, baseline_step),
            *([(RAW_COPY, copy_step)] if name == "postgresql" else []),
            (FULL, applied(store, namespace, items)),
            (CHANGED, applied(store, namespace, changed)),
            (UNCHANGED, applied(store, namespace, changed)),
            (CHANGED_COLD, applied(CacheStore(engine), namespace, changed_again)),
            (CHANGED_REPLICA, applied(store, namespace, changed_third)),
            (FULL + V, applied(store, versioned, items, "version")),
            (CHANGED + V, applied(store, versioned, changed, "version")),
            (UNCHANGED + V, applied(store, versioned, changed, "version")),
            (CHANGED_COLD + V, applied(CacheStore(engine), versioned, changed_again, "version")),
            (CHANGED_REPLICA + V, applied(store, versioned, changed_third, "version")),
        ]
        for scenario, step in steps:
            if scenario == RAW_COPY:
                empty(engine, baseline)  # after the baseline, untimed: the same empty table
            settle(engine)
            before = checkpointed(engine)
            sample = timed(step)
            sample.checkpoint_seconds = checkpointed(engine) - before
            results.samples[scenario].append(sample)
            log(
                f"  {name} repeat {repeat + 1}/{repeats}: {scenario}: "
                f"{sample.seconds:.3f} s, {sample.written} rows written"
                + (
                    f", then {sample.checkpoint_seconds:.3f} s of background WAL checkpoint"
                    if sample.checkpoint_seconds
                    else ""
                )
            )
    reset_tables(engine)
    return results


def profile_engine(
    name: str, engine: Engine, items: list[dict[str, Any]], top: int, out: Callable[[str], None]
) -> None:
    """One sequence under cProfile: the top costs of the baseline, full load and 1% refreshes."""
    baseline = reset_tables(engine)
    rows = baseline_rows(items, engine)
    changed = with_changes(items, SEED + 1)
    changed_again = with_changes(changed, SEED + 1001)
    store = CacheStore(engine)
    steps = [
        (BASELINE, lambda: raw_insert(engine, baseline, rows)),
        (FULL, applied(store, "bench-profile", items)),
        (CHANGED, applied(store, "bench-profile", changed)),
        (CHANGED_COLD, applied(CacheStore(engine), "bench-profile", changed_again)),
    ]
    for scenario, step in steps:
        settle(engine)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.runcall(step)
        elapsed = time.perf_counter() - started
        for sort in ("tottime", "cumulative"):
            buffer = io.StringIO()
            stats = pstats.Stats(profiler, stream=buffer)
            stats.sort_stats(sort).print_stats(top)
            out(f"\n### {name}: {scenario} ({elapsed:.2f} s under cProfile), top {top} by {sort}")
            out(trim_stats(buffer.getvalue()))
    reset_tables(engine)


def trim_stats(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return "\n".join(line.replace(sys.prefix, "<venv>") for line in lines[start:] if line.strip())


# -- reporting ---------------------------------------------------------------------


def code_version() -> str:
    """The commit of the ``refresher`` package measured, and whether it had uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(refresher.__file__)))

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "refresher")
    state = " + uncommitted changes in refresher/" if dirty else ", refresher/ clean"
    return f"commit {commit}{state}"


def machine_info(engines: dict[str, Engine]) -> list[tuple[str, str]]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
            cpu,
        )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = [
        ("code", code_version()),
        ("CPU", cpu),
        ("cores", f"{os.cpu_count()} ({usable} usable by this process)"),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("OS", platform.platform()),
        ("Python", sys.version.split()[0]),
        ("SQLAlchemy", sa.__version__),
        ("orjson", orjson.__version__),
    ]
    if "sqlite" in engines:
        info.append(("SQLite", f"{sqlite3.sqlite_version} (Python sqlite3 module)"))
    if "postgresql" in engines:
        import psycopg

        with engines["postgresql"].connect() as conn:
            server = conn.exec_driver_sql("SHOW server_version").scalar_one()
        info.append(("PostgreSQL", str(server)))
        libpq = psycopg.pq.version()
        info.append(
            (
                "psycopg",
                f"{psycopg.__version__} ({psycopg.pq.__impl__}, libpq "
                f"{libpq // 10000}.{libpq % 10000})",
            )
        )
    return info


def table_rows(r: EngineResults) -> list[list[str]]:
    base_rate = r.rate(BASELINE)
    rows = []
    for scenario in r.scenarios:
        low, high = r.spread(scenario)
        rows.append(
            [
                scenario,
                f"{r.median(scenario):.3f}",
                f"{low:.3f}-{high:.3f}",
                f"{r.cpu_median(scenario):.3f}",
                f"{r.rate(scenario):,.0f}",
                f"{r.written(scenario):,}",
                f"{r.rate(scenario) / base_rate:.2f}",
                ""
                if scenario in (BASELINE, RAW_COPY, FULL, FULL + V)
                else f"{r.median(scenario) / r.median(full_load_of(scenario)):.3f}",
            ]
        )
    return rows


HEADER = [
    "scenario",
    "median s",
    "min-max s",
    "client CPU s",
    "rows/s",
    "rows written",
    "rows/s vs baseline",
    "time vs full load",
]


def full_load_of(scenario: str) -> str:
    """The full load a refresh scenario is compared with (same comparison mode)."""
    return FULL + V if scenario.endswith(V) else FULL


Check = tuple[str, bool | None, str]
"""A target's label, its result (``None``: a figure shown beside the targets) and its figure."""


def targets(r: EngineResults) -> list[Check]:
    """The issue's targets (``True``/``False``) and, as ``None``, figures shown beside them:
    the 1% refreshes of a cold process and after another replica are not targets."""
    one_percent = r.items * CHANGED_FRACTION
    checks: list[tuple[str, bool | None, str]] = []
    for full in (FULL, FULL + V):
        full_ratio = r.rate(full) / r.rate(BASELINE)
        checks.append(
            (
                f"{full} >= {FULL_LOAD_MIN_RATIO:.0%} of the baseline's rows/s",
                full_ratio >= FULL_LOAD_MIN_RATIO,
                f"{full_ratio:.1%}",
            )
        )
    changed = (CHANGED, CHANGED_COLD, CHANGED_REPLICA)
    for scenario in (*changed, *(scenario + V for scenario in changed)):
        time_ratio = r.median(scenario) / r.median(full_load_of(scenario))
        if scenario.removesuffix(V) == CHANGED:
            label = f"{scenario}: <= {REFRESH_MAX_TIME_RATIO:.0%} of the full load's time"
            checks.append((label, time_ratio <= REFRESH_MAX_TIME_RATIO, f"{time_ratio:.1%}"))
        else:
            label = f"(not a target) {scenario}: time vs the full load's"
            checks.append((label, None, f"{time_ratio:.1%}"))
        written = r.written(scenario)
        checks.append(
            (
                f"{scenario}: writes ~1% of the rows",
                abs(written - one_percent) <= one_percent * WRITTEN_TOLERANCE,
                f"{written:,} of {r.items:,} ({written / r.items:.2%})",
            )
        )
    for scenario in (UNCHANGED, UNCHANGED + V):
        unchanged = r.written(scenario)
        checks.append((f"{scenario}: writes 0 rows", unchanged == 0, f"{unchanged:,}"))
    for scenario in (BASELINE, FULL, CHANGED):
        seconds = statistics.median(s.checkpoint_seconds for s in r.samples[scenario])
        if seconds:
            label = f"(not a target) {scenario}: the WAL checkpoint after it, in the background"
            checks.append((label, None, f"{seconds:.3f} s"))
    return checks


def render_text(
    info: list[tuple[str, str]], command: str, payload_mean: float, results: list[EngineResults]
) -> str:
    out = ["Machine"]
    out += [f"  {key:<24} {value}" for key, value in info]
    out.append(f"  {'command':<24} {command}")
    out.append(f"  {'mean payload':<24} {payload_mean:.0f} bytes (canonical JSON)")
    for r in results:
        repeats = len(r.samples[FULL])
        out.append(f"\n{r.engine}: {r.items:,} items, median of {repeats} repeats")
        out += text_table(HEADER, table_rows(r), targets(r))
    return "\n".join(out)


def render_markdown(
    info: list[tuple[str, str]], command: str, payload_mean: float, results: list[EngineResults]
) -> str:
    today = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"## Run of {today}", "", f"Command: `{command}`", "", "| machine | |", "|---|---|"]
    out += [f"| {key} | {value} |" for key, value in info]
    out.append(f"| mean payload | {payload_mean:.0f} bytes (canonical JSON) |")
    for r in results:
        repeats = len(r.samples[FULL])
        out += ["", f"### {r.engine}: {r.items:,} items, median of {repeats} repeats", ""]
        out += markdown_table(HEADER, table_rows(r), targets(r))
    return "\n".join(out)


def text_table(header: Sequence[str], rows: list[list[str]], checks: list[Check]) -> list[str]:
    """A scenario table and its targets as indented lines of plain text."""
    table = [list(header), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = []
    for n, row in enumerate(table):
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  " + "  ".join(cells))
        if n == 0:
            out.append("  " + "  ".join("-" * width for width in widths))
    out.append("  targets:")
    out += [f"    [{verdict(ok, markdown=False)}] {label}: {value}" for label, ok, value in checks]
    return out


def markdown_table(header: Sequence[str], rows: list[list[str]], checks: list[Check]) -> list[str]:
    """A scenario table and its targets as two Markdown tables."""
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    out += ["| " + " | ".join(row) + " |" for row in rows]
    out += ["", "| target | result | figure |", "|---|---|---:|"]
    out += [f"| {label} | {verdict(ok, markdown=True)} | {value} |" for label, ok, value in checks]
    return out


def verdict(ok: bool | None, *, markdown: bool) -> str:
    """A check's result as printed: pass or fail, or none for a figure shown beside them."""
    if ok is None:
        return "-" if markdown else "INFO"
    if markdown:
        return "pass" if ok else "**FAIL**"
    return "PASS" if ok else "FAIL"


# -- entry point -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--markdown", action="store_true", help="print a RESULTS.md section")
    parser.add_argument(
        "--profile", action="store_true", help="run one sequence under cProfile instead"
    )
    parser.add_argument("--top", type=int, default=20, help="functions shown with --profile")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.engines.split(",") if name.strip()]
    unknown = set(names) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown engine(s) {sorted(unknown)}: use sqlite and/or postgresql")
    if args.items < 100 or args.repeats < 1:
        parser.error("use --items >= 100 and --repeats >= 1")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(f"generating {args.items:,} items...")
    items = make_items(args.items)
    payload_mean = statistics.fmean(
        len(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)) for item in items
    )
    log(f"mean payload: {payload_mean:.0f} bytes")
    command = "python bench/refresh.py " + " ".join(
        arg for arg in (argv if argv is not None else sys.argv[1:])
    )

    with contextlib.ExitStack() as stack:
        engines: dict[str, Engine] = {}
        for name in names:
            if name == "sqlite":
                engines[name] = stack.enter_context(sqlite_engine())
            else:
                engines[name] = stack.enter_context(postgresql_engine(args.postgres_url))
        info = machine_info(engines)
        if args.profile:
            for name, engine in engines.items():
                profile_engine(name, engine, items, args.top, print)
            return 0
        results = [
            run_engine(name, engine, items, args.repeats, log) for name, engine in engines.items()
        ]
    render = render_markdown if args.markdown else render_text
    print(render(info, command.strip(), payload_mean, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
