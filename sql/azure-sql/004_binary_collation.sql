-- cache-refresher: migration 004, for Azure SQL databases created before names
-- and keys had a binary collation. New databases get it from
-- 001_cache_tables.sql and need nothing here.
--
-- A database's default collation (SQL_Latin1_General_CP1_CI_AS, say) compares
-- text without case or accents, so the item keys 'ABC' and 'abc', or the
-- namespaces 'Demo' and 'demo', were one key there and two on PostgreSQL and
-- SQLite. This gives the namespace, key and lease name columns the binary
-- collation Latin1_General_100_BIN2, as refresher/schema.py declares them. A
-- column in a primary key or an index cannot change its collation in place, so
-- each key and index is dropped and made again around the change; no row
-- changes (a binary collation only tells more keys apart).
--
-- Stop the service's replicas first: the tables are without their keys for the
-- length of the transaction. Run it in the user database as a user with ALTER
-- on the tables (not the service's identity):
--
--   sqlcmd -S <server>.database.windows.net -d <database> -G -b -i sql/azure-sql/004_binary_collation.sql
--
-- One transaction: it changes everything or nothing. Safe to run again (a
-- table whose columns are already binary is left alone).
--
-- Dropping and re-adding a clustered primary key rewrites the table twice (a
-- heap, then the key again): on a large cache_entries expect time and
-- transaction log in proportion to its size; run it when the database has room.
-- Statistics SQL Server created by itself (_WA_Sys_...) are dropped with the
-- column change; statistics someone created on these columns with CREATE
-- STATISTICS are not, and stop it with Msg 5074 "The statistics '...' is
-- dependent on column '...'": drop them (DROP STATISTICS <table>.<name>) and
-- run it again.

SET XACT_ABORT ON;
BEGIN TRANSACTION;

IF EXISTS (
    SELECT 1 FROM sys.columns
    WHERE object_id = OBJECT_ID('cache_entries') AND name = 'key'
      AND collation_name <> 'Latin1_General_100_BIN2'
)
BEGIN
    DROP INDEX IF EXISTS ix_cache_entries_namespace_generation ON cache_entries;
    ALTER TABLE cache_entries DROP CONSTRAINT pk_cache_entries;
    ALTER TABLE cache_entries ALTER COLUMN namespace NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NOT NULL;
    ALTER TABLE cache_entries ALTER COLUMN [key] NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL;
    ALTER TABLE cache_entries ADD CONSTRAINT pk_cache_entries PRIMARY KEY (namespace, [key]);
    CREATE INDEX ix_cache_entries_namespace_generation ON cache_entries (namespace, generation);
END;

IF EXISTS (
    SELECT 1 FROM sys.columns
    WHERE object_id = OBJECT_ID('cache_leases') AND name = 'name'
      AND collation_name <> 'Latin1_General_100_BIN2'
)
BEGIN
    ALTER TABLE cache_leases DROP CONSTRAINT pk_cache_leases;
    ALTER TABLE cache_leases ALTER COLUMN name NVARCHAR(200) COLLATE Latin1_General_100_BIN2 NOT NULL;
    ALTER TABLE cache_leases ADD CONSTRAINT pk_cache_leases PRIMARY KEY (name);
END;

IF EXISTS (
    SELECT 1 FROM sys.columns
    WHERE object_id = OBJECT_ID('cache_namespaces') AND name = 'namespace'
      AND collation_name <> 'Latin1_General_100_BIN2'
)
BEGIN
    ALTER TABLE cache_namespaces DROP CONSTRAINT pk_cache_namespaces;
    ALTER TABLE cache_namespaces ALTER COLUMN namespace NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NOT NULL;
    ALTER TABLE cache_namespaces ADD CONSTRAINT pk_cache_namespaces PRIMARY KEY (namespace);
END;

IF EXISTS (
    SELECT 1 FROM sys.columns
    WHERE object_id = OBJECT_ID('cache_refresh_runs') AND name = 'namespace'
      AND collation_name <> 'Latin1_General_100_BIN2'
)
BEGIN
    DROP INDEX IF EXISTS ix_cache_refresh_runs_namespace_started ON cache_refresh_runs;
    ALTER TABLE cache_refresh_runs ALTER COLUMN namespace NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NOT NULL;
    CREATE INDEX ix_cache_refresh_runs_namespace_started ON cache_refresh_runs (namespace, started_at);
END;

IF EXISTS (
    SELECT 1 FROM sys.columns
    WHERE object_id = OBJECT_ID('cache_refresh_requests') AND name = 'namespace'
      AND collation_name <> 'Latin1_General_100_BIN2'
)
    ALTER TABLE cache_refresh_requests ALTER COLUMN namespace NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NOT NULL;

COMMIT TRANSACTION;
GO
