"""The reviewed DDL, rendered from the code's table definitions.

:func:`render_ddl` turns :data:`refresher.schema.metadata` into the
``CREATE TABLE`` / ``CREATE INDEX`` statements of one database dialect. The
files a DBA applies, ``sql/<dialect>/001_cache_tables.sql``, hold exactly these
statements under a comment header (``cache-refresher db sql --dialect ...``
prints them; a test proves the files match).

:func:`split_statements` reads such a file back into its statements, so a
test (or a tool) can apply or compare it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from sqlalchemy import Index
from sqlalchemy.dialects import mssql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

from refresher.errors import ConfigurationError
from refresher.schema import metadata

DIALECTS: Mapping[str, Dialect] = MappingProxyType(
    {
        # Without deprecate_large_types, SQLAlchemy renders UnicodeText as the
        # deprecated NTEXT until it has seen a server; Azure SQL wants NVARCHAR(max).
        "azure-sql": mssql.dialect(deprecate_large_types=True),  # type: ignore[no-untyped-call]
        "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
        "sqlite": sqlite.dialect(),
    }
)
"""The dialects the reviewed DDL exists for, by the name used on the command
line and as the directory under ``sql/``."""

_GO_LINE = re.compile(r"^\s*GO\s*$", re.IGNORECASE | re.MULTILINE)
"""A sqlcmd batch separator: ``GO`` alone on its line."""


def render_ddl(dialect_name: str) -> str:
    """The statements that create the cache tables and their indexes.

    Tables come in dependency order, each followed by its indexes (by name);
    every statement ends in ``;`` and a blank line separates them, so the
    output is the same on every run and diffs cleanly against ``sql/``.
    """
    dialect = dialect_for(dialect_name)
    statements = [_compile(element, dialect) for element in _ddl_elements()]
    return "\n\n".join(f"{statement};" for statement in statements) + "\n"


def split_statements(sql: str, *, dialect_name: str) -> list[str]:
    """The statements of a ``.sql`` file, without comments and terminators.

    ``--`` starts a comment that runs to the end of the line (the reviewed
    files hold no string literal containing ``--``), ``;`` ends a statement,
    and for ``azure-sql`` a ``GO`` line (sqlcmd's batch separator) ends one
    too. Empty statements are dropped; each is stripped of outer whitespace.
    """
    dialect_for(dialect_name)
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    if dialect_name == "azure-sql":
        code = _GO_LINE.sub(";", code)
    return [statement.strip() for statement in code.split(";") if statement.strip()]


def dialect_for(dialect_name: str) -> Dialect:
    """The SQLAlchemy dialect for a name in :data:`DIALECTS`."""
    try:
        return DIALECTS[dialect_name]
    except KeyError:
        raise ConfigurationError(
            f"unknown SQL dialect {dialect_name!r}: use one of {', '.join(sorted(DIALECTS))}"
        ) from None


def _ddl_elements() -> list[ExecutableDDLElement]:
    elements: list[ExecutableDDLElement] = []
    for table in metadata.sorted_tables:
        elements.append(CreateTable(table))
        elements.extend(CreateIndex(index) for index in sorted(table.indexes, key=_index_name))
    return elements


def _index_name(index: Index) -> str:
    return str(index.name or "")


def _compile(element: ExecutableDDLElement, dialect: Dialect) -> str:
    # SQLAlchemy indents with tabs and leaves a space after each comma: tidy
    # both so the reviewed files carry no trailing whitespace.
    text = str(element.compile(dialect=dialect)).strip()
    return "\n".join(line.rstrip().expandtabs(4) for line in text.splitlines())
