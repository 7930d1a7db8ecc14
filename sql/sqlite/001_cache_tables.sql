-- cache-refresher: the cache tables, for SQLite.
--
-- SQLite serves single-machine deployments and development. Create a new
-- database file with:
--
--   sqlite3 /path/to/cache.db < sql/sqlite/001_cache_tables.sql
--
-- (`cache-refresher db init` does the same from the code's definitions.)
--
-- Generated from refresher/schema.py: the statements below must stay exactly
-- what `cache-refresher db sql --dialect sqlite` prints (a test checks).
-- Change the schema in the code and regenerate the statements; never edit
-- them by hand.

CREATE TABLE cache_entries (
    namespace VARCHAR(100) NOT NULL,
    "key" VARCHAR(256) NOT NULL,
    payload TEXT NOT NULL,
    etag VARCHAR(64) NOT NULL,
    generation BIGINT NOT NULL,
    changed_at DATETIME NOT NULL,
    source_version VARCHAR(200),
    CONSTRAINT pk_cache_entries PRIMARY KEY (namespace, "key")
);

CREATE INDEX ix_cache_entries_namespace_generation ON cache_entries (namespace, generation);

CREATE TABLE cache_leases (
    name VARCHAR(200) NOT NULL,
    holder VARCHAR(200) NOT NULL,
    token BIGINT NOT NULL,
    acquired_at DATETIME NOT NULL,
    expires_at DATETIME NOT NULL,
    CONSTRAINT pk_cache_leases PRIMARY KEY (name)
);

CREATE TABLE cache_namespaces (
    namespace VARCHAR(100) NOT NULL,
    generation BIGINT NOT NULL,
    row_count BIGINT NOT NULL,
    refreshed_at DATETIME,
    last_attempt_at DATETIME,
    last_error_class VARCHAR(200),
    last_error_message VARCHAR(2000),
    source_version VARCHAR(200),
    CONSTRAINT pk_cache_namespaces PRIMARY KEY (namespace)
);

CREATE TABLE cache_refresh_requests (
    id INTEGER NOT NULL,
    namespace VARCHAR(100) NOT NULL,
    requested_at DATETIME NOT NULL,
    requested_by VARCHAR(200) NOT NULL,
    status VARCHAR(20) NOT NULL,
    claimed_by VARCHAR(200),
    claimed_at DATETIME,
    run_id BIGINT,
    finished_at DATETIME,
    error_message VARCHAR(2000),
    CONSTRAINT pk_cache_refresh_requests PRIMARY KEY (id)
);

CREATE INDEX ix_cache_refresh_requests_status_requested ON cache_refresh_requests (status, requested_at);

CREATE TABLE cache_refresh_runs (
    id INTEGER NOT NULL,
    namespace VARCHAR(100) NOT NULL,
    started_at DATETIME NOT NULL,
    finished_at DATETIME,
    status VARCHAR(20) NOT NULL,
    generation BIGINT,
    rows_inserted INTEGER NOT NULL,
    rows_updated INTEGER NOT NULL,
    rows_deleted INTEGER NOT NULL,
    rows_unchanged INTEGER NOT NULL,
    error_class VARCHAR(200),
    error_message VARCHAR(2000),
    secret_versions TEXT,
    runner VARCHAR(200) NOT NULL,
    CONSTRAINT pk_cache_refresh_runs PRIMARY KEY (id)
);

CREATE INDEX ix_cache_refresh_runs_namespace_started ON cache_refresh_runs (namespace, started_at);
