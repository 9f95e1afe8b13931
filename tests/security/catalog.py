"""Catalog checks behind tests/security/test_catalog.py: each returns the objects that break
one isolation rule, read from the PostgreSQL catalog so that a table or function added later
is checked without anyone remembering to list it.

The service role is the login role the service connects as; it acts with the privileges of
every role it is a member of (pg_has_role ... 'USAGE'), so each check asks about the role
itself and never about one group it happens to belong to.
"""

from __future__ import annotations

import re
from typing import Any

# Relations whose rows are data (tables, partitioned tables, materialised views, foreign tables).
DATA_RELKINDS = ["r", "p", "m", "f"]
RELATION_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"
TIMESCALEDB_SCHEMAS = ["_timescaledb_internal", "_timescaledb_catalog", "_timescaledb_cache"]
# A policy or a view filters on the tenant of the transaction (migrations/0001_baseline.sql).
TENANT_FILTER = re.compile(r"\btenant_id\s*=\s*(public\.)?app_tenant_id\(\)")

# Tenant tables the service may append to but never read, update or delete from, and so
# without row-level security: what a row holds cannot flow back to any tenant. Each entry says
# why a tenant filter cannot apply. Anything else with a tenant_id needs forced RLS or a view.
WRITE_ONLY_SINKS = {
    # The writer records one batch's rejects for every tenant at once, and a tenant mismatch
    # (the reason for many rejects) has no single tenant to filter on. Operators read it as
    # the owner; `iotcore maintain` prunes it as the owner.
    "ingest_rejects": "rejected telemetry, for operators",
}

_USER_SCHEMAS = """
    n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""


async def relation_privileges(conn: Any, role: str, relation_oid: int) -> list[str]:
    """Every privilege `role` holds on a relation, column grants included."""
    rows = await conn.fetch(
        """
        SELECT p FROM unnest(string_to_array($3, ', ')) AS p
        WHERE has_table_privilege($1, $2::oid, p)
        UNION ALL
        SELECT 'column ' || p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) p
        WHERE NOT has_table_privilege($1, $2::oid, p) AND has_any_column_privilege($1, $2::oid, p)
        """,
        role,
        relation_oid,
        RELATION_PRIVILEGES,
    )
    return [r[0] for r in rows]


async def tenant_relations(conn: Any) -> list[Any]:
    """Every data relation with a `tenant_id` column: (oid, name, rls, forced)."""
    return list(
        await conn.fetch(
            f"""
            SELECT c.oid, c.oid::regclass::text AS name,
                   c.relrowsecurity AS rls, c.relforcerowsecurity AS forced
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
                                AND NOT a.attisdropped
            WHERE c.relkind::text = ANY($1::text[]) AND {_USER_SCHEMAS}
            ORDER BY 2
            """,
            DATA_RELKINDS,
        )
    )


async def unprotected_tenant_relations_with_service_privileges(
    conn: Any, service_role: str
) -> list[str]:
    """Tenant relations without forced row-level security that the service can touch
    directly. Such a relation must be reached only through a tenant-filtered view (or be a
    listed write-only sink that the service can only INSERT into)."""
    found = []
    for rel in await tenant_relations(conn):
        if rel["rls"] and rel["forced"]:
            continue
        privileges = await relation_privileges(conn, service_role, rel["oid"])
        if rel["name"] in WRITE_ONLY_SINKS and privileges == ["INSERT"]:
            continue
        if privileges:
            found.append(f"{rel['name']} (rls={rel['rls']}, forced={rel['forced']}): {privileges}")
    return found


async def service_policies_without_tenant_filter(conn: Any, service_role: str) -> list[str]:
    """Row-level policies that apply to the service but do not filter on the tenant setting
    (a permissive `USING (true)` would undo the isolation)."""
    rows = await conn.fetch(
        """
        SELECT p.polrelid::regclass::text AS rel, p.polname, p.polcmd, p.polpermissive,
               pg_get_expr(p.polqual, p.polrelid) AS using_expr,
               pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
        FROM pg_policy p
        WHERE p.polroles = '{0}'::oid[]
           OR EXISTS (SELECT 1 FROM unnest(p.polroles) r WHERE pg_has_role($1, r, 'USAGE'))
        ORDER BY 1, 2
        """,
        service_role,
    )
    found = []
    for row in rows:
        if not row["polpermissive"]:
            continue  # a restrictive policy can only narrow what the service sees
        # INSERT has no USING; UPDATE and ALL without WITH CHECK reuse USING for new rows.
        exprs = [row["check_expr"] or row["using_expr"]]
        if row["polcmd"] != "a":
            exprs.append(row["using_expr"])
        if not all(expr and TENANT_FILTER.search(expr) for expr in exprs):
            found.append(f"{row['rel']}.{row['polname']} ({row['polcmd']}): {exprs}")
    return found


async def views_over_unprotected_tenant_relations(conn: Any, service_role: str) -> list[Any]:
    """Views the service can use that read, at any depth, a tenant relation without forced
    row-level security: (oid, name, owner, options, definition, privileges)."""
    return list(
        await conn.fetch(
            f"""
            WITH RECURSIVE reads(view, rel) AS (
                SELECT r.ev_class, d.refobjid
                FROM pg_rewrite r
                JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                                AND d.refclassid = 'pg_class'::regclass
                WHERE d.refobjid <> r.ev_class
                UNION
                SELECT reads.view, d.refobjid
                FROM reads
                JOIN pg_rewrite r ON r.ev_class = reads.rel
                JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                                AND d.refclassid = 'pg_class'::regclass
                WHERE d.refobjid <> r.ev_class
            ),
            unprotected AS (
                SELECT c.oid FROM pg_class c
                JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
                                    AND NOT a.attisdropped
                WHERE c.relkind::text = ANY($2::text[])
                  AND NOT (c.relrowsecurity AND c.relforcerowsecurity)
            )
            SELECT DISTINCT v.oid, v.oid::regclass::text AS name,
                   v.relowner::regrole::text AS owner,
                   pg_has_role($1, v.relowner, 'USAGE') AS service_is_owner,
                   coalesce(v.reloptions, '{{}}') AS options,
                   pg_get_viewdef(v.oid) AS definition
            FROM reads
            JOIN pg_class v ON v.oid = reads.view
            JOIN pg_namespace n ON n.oid = v.relnamespace
            WHERE reads.rel IN (SELECT oid FROM unprotected)
              AND v.relkind IN ('v', 'm') AND {_USER_SCHEMAS}
              AND (has_table_privilege($1, v.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
                   OR has_any_column_privilege($1, v.oid, 'SELECT, INSERT, UPDATE'))
            ORDER BY 2
            """,
            service_role,
            DATA_RELKINDS,
        )
    )


async def unfiltered_tenant_views(conn: Any, service_role: str) -> list[str]:
    """Views over unprotected tenant relations that are not a tenant filter: owned by a role
    other than the service's, security_barrier, not security_invoker, filtered on the tenant
    setting, and WITH CASCADED CHECK OPTION when the service may write through them."""
    found = []
    for view in await views_over_unprotected_tenant_relations(conn, service_role):
        options = set(view["options"])
        problems = []
        if view["service_is_owner"]:
            problems.append(f"owned by {view['owner']}, a role of the service")
        if not options & {"security_barrier=true", "security_barrier=on"}:
            problems.append("not security_barrier")
        if options & {"security_invoker=true", "security_invoker=on"}:
            problems.append("security_invoker")
        if not TENANT_FILTER.search(view["definition"]):
            problems.append("no tenant_id = app_tenant_id() filter")
        writes = await relation_privileges(conn, service_role, view["oid"])
        writable = {"INSERT", "UPDATE", "DELETE", "column INSERT", "column UPDATE"}
        if writable & set(writes) and "check_option=cascaded" not in options:
            problems.append(f"writable ({writes}) without WITH CASCADED CHECK OPTION")
        if problems:
            found.append(f"{view['name']}: {problems}")
    return found


async def security_definer_functions(conn: Any) -> list[Any]:
    """The project's SECURITY DEFINER functions (not an extension's)."""
    return list(
        await conn.fetch(
            f"""
            SELECT p.oid, p.oid::regprocedure::text AS name,
                   coalesce(p.proconfig, '{{}}') AS config,
                   EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner)))
                           WHERE grantee = 0) AS public_execute
            FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.prosecdef AND {_USER_SCHEMAS}
              AND NOT EXISTS (SELECT 1 FROM pg_depend d
                              WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                AND d.deptype = 'e')
            ORDER BY 2
            """
        )
    )


async def definer_functions_without_pinned_search_path(conn: Any, service_role: str) -> list[str]:
    """A SECURITY DEFINER function runs with its owner's rights; without its own search_path
    the caller's decides which `users` or `=` it calls. Pinned means: set on the function,
    no `$user`, pg_temp named last (otherwise it is searched first), every schema one that
    neither the service nor PUBLIC can create objects in; and not executable by PUBLIC."""
    found = []
    for fn in await security_definer_functions(conn):
        settings = dict(item.split("=", 1) for item in fn["config"])
        path = settings.get("search_path")
        problems = []
        if path is None:
            problems.append("no search_path")
        else:
            schemas = [s.strip().strip('"') for s in path.split(",")]
            if "$user" in schemas:
                problems.append("$user in search_path")
            if schemas[-1] != "pg_temp":
                problems.append(f"pg_temp not last in {path!r}")
            for schema in schemas:
                if schema in ("pg_temp", "pg_catalog", "$user"):
                    continue
                writable = await conn.fetchval(
                    """
                    SELECT has_schema_privilege($1, n.oid, 'CREATE')
                        OR EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl,
                                                                   acldefault('n', n.nspowner)))
                                   WHERE grantee = 0 AND privilege_type = 'CREATE')
                    FROM pg_namespace n WHERE n.nspname = $2
                    """,
                    service_role,
                    schema,
                )
                if writable is None:
                    problems.append(f"schema {schema} does not exist")
                elif writable:
                    problems.append(f"schema {schema} is writable by the service or PUBLIC")
        if fn["public_execute"]:
            problems.append("executable by PUBLIC")
        if problems:
            found.append(f"{fn['name']}: {problems}")
    return found


async def objects_owned_by_service(conn: Any, service_role: str) -> list[str]:
    """Every object of this database (and every shared one) owned by the service role or by
    a role it is a member of. pg_shdepend records the owner of every object whatever its kind
    (table, view, function, sequence, schema, type, ...), except the bootstrap superuser's."""
    rows = await conn.fetch(
        """
        SELECT pg_describe_object(s.classid, s.objid, s.objsubid) || ' owned by '
               || s.refobjid::regrole::text
        FROM pg_shdepend s
        WHERE s.refclassid = 'pg_authid'::regclass AND s.deptype = 'o'
          AND s.dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
          AND pg_has_role($1, s.refobjid, 'USAGE')
        ORDER BY 1
        """,
        service_role,
    )
    return [r[0] for r in rows]


async def service_role_powers(conn: Any, service_role: str) -> list[str]:
    """Role attributes and memberships that would bypass grants or row-level security: for
    the service role and every role it inherits from, no superuser, BYPASSRLS, CREATEROLE or
    CREATEDB, and no predefined pg_* role (pg_read_all_data reads every table)."""
    rows = await conn.fetch(
        """
        SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb
        FROM pg_roles r WHERE pg_has_role($1, r.oid, 'MEMBER') ORDER BY 1
        """,
        service_role,
    )
    found = []
    for row in rows:
        powers = [k for k in ("rolsuper", "rolbypassrls", "rolcreaterole", "rolcreatedb") if row[k]]
        if row["rolname"].startswith("pg_"):
            powers.append("predefined role")
        if powers:
            found.append(f"{row['rolname']}: {powers}")
    return found


async def schemas_service_can_create_in(conn: Any, service_role: str) -> list[str]:
    """Where the service could create an object (and so own one, or plant one on a path)."""
    rows = await conn.fetch(
        f"""
        SELECT n.nspname FROM pg_namespace n
        WHERE {_USER_SCHEMAS} AND has_schema_privilege($1, n.oid, 'CREATE')
        UNION ALL
        SELECT 'database ' || current_database()
        WHERE has_database_privilege($1, current_database(), 'CREATE')
        """,
        service_role,
    )
    return [r[0] for r in rows]


async def base_telemetry_relations(conn: Any) -> list[Any]:
    """Every relation holding telemetry or data derived from it, and TimescaleDB's internals:
    each tenant relation without forced row-level security (the telemetry table, rollups,
    materialisations) but the write-only sinks, every partition or chunk under one (pg_inherits,
    at any depth), and every relation in TimescaleDB's schemas (chunks, compressed chunks,
    materialisation hypertables, the catalog): (oid, name, metadata, public_select).
    `metadata`: a TimescaleDB relation without a tenant_id column (its catalog, caches and
    statistics views); `public_select`: PUBLIC may SELECT it (TimescaleDB's own grant)."""
    return list(
        await conn.fetch(
            f"""
            WITH RECURSIVE tree(oid) AS (
                SELECT c.oid FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
                                    AND NOT a.attisdropped
                WHERE c.relkind::text = ANY($1::text[]) AND {_USER_SCHEMAS}
                  AND NOT (c.relrowsecurity AND c.relforcerowsecurity)
                  AND c.oid::regclass::text <> ALL($3::text[])
                UNION
                SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid
            )
            SELECT c.oid, c.oid::regclass::text AS name,
                   n.nspname = ANY($2::text[]) AND NOT EXISTS (
                       SELECT 1 FROM pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                         AND NOT a.attisdropped
                   ) AS metadata,
                   EXISTS (SELECT 1 FROM aclexplode(coalesce(c.relacl, acldefault('r', c.relowner)))
                           WHERE grantee = 0 AND privilege_type = 'SELECT') AS public_select
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid IN (SELECT oid FROM tree)
               OR (n.nspname = ANY($2::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S'))
            ORDER BY 2
            """,
            DATA_RELKINDS,
            TIMESCALEDB_SCHEMAS,
            list(WRITE_ONLY_SINKS),
        )
    )


async def base_telemetry_privileges(conn: Any, service_role: str) -> list[str]:
    """Privileges of the service on base telemetry. The one exception: TimescaleDB grants
    SELECT on its own metadata to PUBLIC (chunk time ranges, job settings, sizes: no tenant's
    rows), which the service holds as everyone does; a grant naming the service is flagged."""
    found = []
    for rel in await base_telemetry_relations(conn):
        privileges = await relation_privileges(conn, service_role, rel["oid"])
        if (
            rel["metadata"]
            and rel["public_select"]
            and privileges == ["SELECT"]
            and not await _granted_to_service(conn, service_role, rel["oid"])
        ):
            continue
        if privileges:
            found.append(f"{rel['name']}: {privileges}")
    return found


async def _granted_to_service(conn: Any, service_role: str, relation_oid: int) -> bool:
    granted: bool = await conn.fetchval(
        """
        SELECT EXISTS (
            SELECT 1 FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) g
            WHERE c.oid = $2::oid AND g.grantee <> 0 AND pg_has_role($1, g.grantee, 'USAGE')
        )
        """,
        service_role,
        relation_oid,
    )
    return granted
