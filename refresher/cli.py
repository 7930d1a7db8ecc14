"""The ``cache-refresher`` command line (typer + rich).

This module holds the typer app and the commands that need only this package
(``db init``, ``db sql``, ``namespaces``). ``api.cli`` adds ``dev`` (it serves the web app,
and this package never imports ``api``) and is the console script's entry
point.

Every command builds its :class:`~refresher.settings.Settings` with
:func:`~refresher.settings.load_settings`, so ``CACHE_REFRESHER_*`` variables
apply. Our errors print one line and exit non-zero, never a traceback:
exit 2 for bad settings or arguments, 1 when the work itself failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from refresher.cache import CacheStore, NamespaceInfo
from refresher.db import cache_engine, init_schema
from refresher.ddl import DIALECTS, render_ddl
from refresher.errors import CacheRefresherError, ConfigurationError
from refresher.settings import Settings, load_settings

EXIT_FAILED = 1
EXIT_USAGE = 2

app = typer.Typer(
    name="cache-refresher",
    help="Keep a shared cache table filled from upstream sources, and serve it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Create the cache tables, or print their DDL.", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``message`` to stderr as one error and exit with ``code``."""
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


def settings_or_exit(**overrides: object) -> Settings:
    """The settings from the environment and ``overrides``, or exit 2 saying what is wrong."""
    with reported_errors():
        settings = load_settings(**overrides)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
    backend = engine.url.get_backend_name()
    console.print(f"The cache tables exist on the {backend} database.", highlight=False)


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


@app.command("namespaces")
def list_namespaces() -> None:
    """List the cached namespaces: rows, generation, age and last error."""
    settings = settings_or_exit()
    with reported_errors(), cache_engine(settings) as engine:
        infos = CacheStore(engine).namespaces()
    if not infos:
        console.print("No namespace has been refreshed yet.", highlight=False)
        return
    console.print(_namespace_table(infos))


def _namespace_table(infos: list[NamespaceInfo]) -> Table:
    table = Table("namespace", "rows", "generation", "refreshed at", "age (s)", "last error")
    for info in infos:
        age = info.age_seconds()
        table.add_row(
            info.namespace,
            str(info.row_count),
            str(info.generation),
            "never" if info.refreshed_at is None else f"{info.refreshed_at:%Y-%m-%d %H:%M:%S} UTC",
            "" if age is None else f"{age:.0f}",
            info.last_error_class or "",
        )
    return table
