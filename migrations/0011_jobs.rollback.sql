DROP FUNCTION IF EXISTS purge_tenant_rows(regclass, uuid, integer);
DROP TABLE IF EXISTS operator_audit;
DROP TABLE IF EXISTS jobs;
