ALTER TABLE ingest_rejects DROP COLUMN IF EXISTS sqlstate;
