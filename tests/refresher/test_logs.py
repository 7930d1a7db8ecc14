"""The commands' log formats: text for a terminal, JSON for a log collector."""

from __future__ import annotations

import json
import logging
import sys
import threading

import pytest
from asgi_correlation_id.context import correlation_id

from refresher.logs import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    in_this_context,
    namespace_logged,
    new_request_id,
    usable_request_id,
)


def _record(message: str = "refreshed %r", *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad page")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.getLogger("refresher.test").makeRecord(
        "refresher.test", logging.WARNING, __file__, 1, message, args or ("users",), exc_info
    )
    ContextFilter().filter(record)
    return record


def test_a_json_record_is_one_line_with_the_time_first_and_no_request_id_outside_one() -> None:
    line = JsonFormatter().format(_record())
    assert "\n" not in line
    record = json.loads(line)
    assert next(iter(record)) == "time"
    assert record["time"].endswith("+00:00")
    assert {k: record[k] for k in ("level", "logger", "message")} == {
        "level": "WARNING", "logger": "refresher.test", "message": "refreshed 'users'",
    }  # fmt: skip
    assert "request_id" not in record


def test_a_record_logged_for_a_request_carries_its_id_in_both_formats() -> None:
    token = correlation_id.set("trace-1")
    try:
        record = _record()
    finally:
        correlation_id.reset(token)
    assert json.loads(JsonFormatter().format(record))["request_id"] == "trace-1"
    assert TextFormatter().format(record).endswith("WARNING refresher.test: refreshed 'users' "
                                                   "[request trace-1]")  # fmt: skip
    assert "[request" not in TextFormatter().format(_record())


def test_an_exception_is_one_field_of_its_record() -> None:
    record = json.loads(JsonFormatter().format(_record("failed %s", "page 3", exc=True)))
    assert record["exception"].startswith("Traceback")
    assert "ValueError: bad page" in record["exception"]
    assert "exc_info" not in record


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("4bf92f3577b34da6a3ce929d0e0e4736", True),
        ("Root=1-67891233-abcdef012345678912345678", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("a b", False),
        ("x\ny", False),
        ('x"}{"level":"ERROR', False),
        ("-leading-dash", False),
    ],
)
def test_a_callers_request_id_is_kept_only_when_short_and_plain(value: str, kept: bool) -> None:
    assert usable_request_id(value) is kept


def test_configure_leaves_a_configured_root_logger_its_handlers() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    assert before  # pytest's capture handlers
    level = root.level
    try:
        configure_logging("DEBUG", "json")
        assert root.handlers == before
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(level)


def test_a_refreshs_records_carry_its_namespace_in_the_threads_it_starts() -> None:
    seen: dict[str, object] = {}

    def in_thread() -> None:
        seen["started"] = json.loads(JsonFormatter().format(_record())).get("namespace")

    with namespace_logged("users"):
        inside = json.loads(JsonFormatter().format(_record()))
        thread = threading.Thread(target=in_this_context(in_thread))
        plain = threading.Thread(
            target=lambda: seen.update(plain=getattr(_record(), "namespace", "unset"))
        )
    thread.start()
    plain.start()
    thread.join()
    plain.join()
    assert inside["namespace"] == "users"
    assert seen == {"started": "users", "plain": None}  # a thread starts with no context
    assert "namespace" not in json.loads(JsonFormatter().format(_record()))  # ended


def test_made_up_request_ids_are_unique_and_a_uuids_length() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and usable_request_id(i) for i in ids)
    assert len({i[:16] for i in ids}) == 1  # this process's random part
