-- cache-refresher: migration 003, for databases created before the index on
-- cache_entries (namespace, generation) existed. New databases get it from
-- 001_cache_tables.sql and need nothing here.
--
-- Readers find the rows a refresh wrote by their generation (the API's memory
-- layer follows each refresh this way) instead of scanning the namespace.
-- Building it takes SQLite's write lock for a moment per 100,000 rows:
--
--   sqlite3 /path/to/cache.db < sql/sqlite/003_cache_entries_generation_index.sql
--
-- Safe to run again.

CREATE INDEX IF NOT EXISTS ix_cache_entries_namespace_generation
    ON cache_entries (namespace, generation);
