-- cache-refresher: the cache tables, for Azure SQL Database.
--
-- Reviewed DDL a DBA applies once per database, before the service starts.
-- The service itself never runs DDL in production: its identity gets only
-- SELECT/INSERT/UPDATE/DELETE on these tables (002_app_identity_user.sql).
--
-- Apply it connected to the *user* database (not master) as a user allowed to
-- create tables, e.g. the server's Microsoft Entra admin:
--
--   sqlcmd -S <server>.database.windows.net -d <database> \
--       --authentication-method ActiveDirectoryDefault -b \
--       -i sql/azure-sql/001_cache_tables.sql
--
-- (go-sqlcmd; with the ODBC sqlcmd use -G instead of --authentication-method),
-- or open it in Azure Data Studio / SSMS / VS Code (mssql) and run it.
-- The tables are created in the applier's default schema (dbo for an Entra
-- admin), which is where the service and 002_app_identity_user.sql expect them.
--
-- Readers never see half a refresh only with READ_COMMITTED_SNAPSHOT ON, the
-- default of Azure SQL Database but not of SQL Server (sql/README.md says how
-- to check it): SELECT is_read_committed_snapshot_on FROM sys.databases
-- WHERE name = DB_NAME();
--
-- Generated from refresher/schema.py: the statements below must stay exactly
-- what `cache-refresher db sql --dialect azure-sql` prints (a test checks).
-- Change the schema in the code and regenerate the statements; never edit
-- them by hand.

CREATE TABLE cache_entries (
    namespace NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NOT NULL,
    [key] NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    payload NVARCHAR(max) NOT NULL,
    etag VARCHAR(64) NOT NULL,
    generation BIGINT NOT NULL,
    changed_at DATETIMEOFFSET NOT NULL,
    source_version NVARCHAR(200) NULL,
    CONSTRAINT pk_cache_entries PRIMARY KEY (namespace, [key])
);

CREATE INDEX ix_cache_entries_namespace_generation ON cache_entries (namespace, generation);

CREATE TABLE cache_leases (
    name NVARCHAR(200) COLLATE Latin1_General_100_BIN2 NOT NULL,
    holder NVARCHAR(200) NOT NULL,
    token BIGINT NOT NULL,
    acquired_at DATETIMEOFFSET NOT NULL,
    expires_at DATETIMEOFFSET NOT NULL,
    CONSTRAINT pk_cache_leases PRIMARY KEY (name)
);

CREATE TABLE cache_namespaces (
    namespace NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NOT NULL,
    generation BIGINT NOT NULL,
    row_count BIGINT NOT NULL,
    refreshed_at DATETIMEOFFSET NULL,
    last_attempt_at DATETIMEOFFSET NULL,
    last_error_class VARCHAR(200) NULL,
    last_error_message NVARCHAR(2000) NULL,
    source_version NVARCHAR(200) NULL,
    CONSTRAINT pk_cache_namespaces PRIMARY KEY (namespace)
);

CREATE TABLE cache_refresh_requests (
    id BIGINT NOT NULL IDENTITY,
    namespace NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NOT NULL,
    requested_at DATETIMEOFFSET NOT NULL,
    requested_by NVARCHAR(200) NOT NULL,
    status VARCHAR(20) NOT NULL,
    claimed_by NVARCHAR(200) NULL,
    claimed_at DATETIMEOFFSET NULL,
    run_id BIGINT NULL,
    finished_at DATETIMEOFFSET NULL,
    error_message NVARCHAR(2000) NULL,
    CONSTRAINT pk_cache_refresh_requests PRIMARY KEY (id)
);

CREATE INDEX ix_cache_refresh_requests_status_requested ON cache_refresh_requests (status, requested_at);

CREATE TABLE cache_refresh_runs (
    id BIGINT NOT NULL IDENTITY,
    namespace NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NOT NULL,
    started_at DATETIMEOFFSET NOT NULL,
    finished_at DATETIMEOFFSET NULL,
    status VARCHAR(20) NOT NULL,
    generation BIGINT NULL,
    rows_inserted INTEGER NOT NULL,
    rows_updated INTEGER NOT NULL,
    rows_deleted INTEGER NOT NULL,
    rows_unchanged INTEGER NOT NULL,
    error_class VARCHAR(200) NULL,
    error_message NVARCHAR(2000) NULL,
    secret_versions NVARCHAR(max) NULL,
    runner NVARCHAR(200) NOT NULL,
    CONSTRAINT pk_cache_refresh_runs PRIMARY KEY (id)
);

CREATE INDEX ix_cache_refresh_runs_namespace_started ON cache_refresh_runs (namespace, started_at);
