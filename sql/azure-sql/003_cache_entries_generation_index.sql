-- cache-refresher: migration 003, for databases created before the index on
-- cache_entries (namespace, generation) existed. New databases get it from
-- 001_cache_tables.sql and need nothing here.
--
-- Readers find the rows a refresh wrote by their generation (the API's memory
-- layer follows each refresh this way) instead of scanning the namespace.
-- ONLINE = ON builds it without blocking refreshes. Run it in the user
-- database as a user with ALTER on the table (not the service's identity):
--
--   sqlcmd -S <server>.database.windows.net -d <database> -G -i sql/azure-sql/003_cache_entries_generation_index.sql
--
-- Safe to run again.

IF NOT EXISTS (
    SELECT 1 FROM sys.indexes
    WHERE name = 'ix_cache_entries_namespace_generation'
      AND object_id = OBJECT_ID('cache_entries')
)
    CREATE INDEX ix_cache_entries_namespace_generation
        ON cache_entries (namespace, generation) WITH (ONLINE = ON);
GO
