-- A reading the database refused (reason storage_refused) keeps the SQLSTATE it was refused
-- with, so that an operator can tell a check violation from a permission problem.
ALTER TABLE ingest_rejects ADD COLUMN sqlstate text;
