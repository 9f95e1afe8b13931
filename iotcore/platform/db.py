"""asyncpg pools for the service role, and transactions scoped to one tenant."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
import orjson

from iotcore.config import Settings
from iotcore.platform.shutdown import CLOSE_TIMEOUT_S, close_pool

# asyncpg ships no type information; the alias names what is meant.
Connection: TypeAlias = Any
Pool: TypeAlias = Any


async def init_connection(conn: Any) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )
    await conn.set_type_codec(
        "json",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


class Database:
    """The service's pools: `primary` for writes, `read` for dashboard reads (replica if set)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._primary: Pool | None = None
        self._read: Pool | None = None

    async def connect(self) -> None:
        self._primary = await self._create_pool(self._settings.database_url)
        if self._settings.database_read_url:
            self._read = await self._create_pool(self._settings.database_read_url)

    async def _create_pool(self, dsn: str) -> Pool:
        # Pools start lazily (min_size=0 until the first use) so the API can come up, and report
        # itself not ready, while Postgres is still down.
        return await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=self._settings.database_pool_max,
            timeout=self._settings.database_timeout_s,
            command_timeout=self._settings.database_timeout_s * 6,
            init=init_connection,
            # Generic plans cannot prune partitions by a parameter's value and were seen to
            # turn millisecond reads into seconds; plan each execution for its parameters.
            server_settings={"plan_cache_mode": "force_custom_plan"},
            max_inactive_connection_lifetime=60,
            reset=_end_transaction,
        )

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Close the pools; a connection not released within `timeout_s` is terminated."""
        for pool in (self._primary, self._read):
            if pool is not None:
                await close_pool(pool, timeout_s)

    @property
    def primary(self) -> Pool:
        if self._primary is None:
            raise RuntimeError("Database.connect() was not awaited")
        return self._primary

    @property
    def read_pool(self) -> Pool:
        return self._read or self.primary

    def pool_sizes(self) -> dict[str, dict[str, int]]:
        """Connections per pool (in_use, idle, max), for the metrics endpoint."""
        pools = {"primary": self._primary, "read": self._read}
        return {
            name: {
                "in_use": pool.get_size() - pool.get_idle_size(),
                "idle": pool.get_idle_size(),
                "max": pool.get_max_size(),
            }
            for name, pool in pools.items()
            if pool is not None
        }

    @asynccontextmanager
    async def transaction(self, *, read: bool = False) -> AsyncIterator[Connection]:
        """A transaction with no tenant set: only SECURITY DEFINER look-ups see anything."""
        pool = self.read_pool if read else self.primary
        async with pool.acquire() as conn, conn.transaction(readonly=read):
            yield conn

    @asynccontextmanager
    async def tenant_transaction(
        self, tenant_id: UUID | str, *, read: bool = False, repeatable: bool = False
    ) -> AsyncIterator[Connection]:
        """A transaction in which row-level security and the telemetry views see one tenant.

        BEGIN and the tenant go to Postgres as one simple query (one round trip instead of
        two: this wraps every tenant request). The tenant is inlined only after UUID()
        has parsed it, so the text is nothing but hex digits and hyphens. `repeatable`: one
        snapshot for every statement (REPEATABLE READ), for reads made of several."""
        begin = _begin(
            tenant_id if isinstance(tenant_id, UUID) else UUID(tenant_id), read, repeatable
        )
        pool = self.read_pool if read else self.primary
        async with pool.acquire() as conn:
            await conn.execute(begin)
            try:
                yield conn
            except BaseException:
                if not conn.is_closed() and conn.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")


@functools.lru_cache(maxsize=4096)
def _begin(tenant_id: UUID, read: bool, repeatable: bool) -> str:
    """BEGIN and the tenant as one simple query, made once per tenant and kind (UUID.__str__
    is Python: some 7k instructions a call, on every tenant transaction)."""
    begin = "BEGIN ISOLATION LEVEL REPEATABLE READ" if repeatable else "BEGIN"
    begin += " READ ONLY" if read else ""
    return f"{begin}; SELECT set_config('app.tenant_id', '{tenant_id}', true)"


async def set_tenant(conn: Connection, tenant_id: UUID | str) -> None:
    """Scope the current transaction to a tenant (like SET LOCAL: ends with the transaction)."""
    await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))


async def _end_transaction(conn: Connection) -> None:
    """What a connection needs before it goes back to the pool. Nothing in iotcore sets
    session state (the tenant is transaction-local: set_config(..., true)), holds advisory
    locks or listens, so asyncpg's default reset (RESET ALL, UNLISTEN, CLOSE ALL: a round
    trip on every release) is not needed; only a transaction left open is ended."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
