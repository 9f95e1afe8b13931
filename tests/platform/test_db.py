"""The tenant transaction against the real Postgres: the tenant never outlives it, a failed
one is rolled back, and a connection goes back to the pool clean."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from iotcore.config import Settings
from iotcore.platform.db import Database


@pytest_asyncio.fixture
async def one_connection(settings: Settings) -> AsyncIterator[Database]:
    """A pool of one: every acquire gets the same connection back."""
    db = Database(settings.model_copy(update={"database_pool_max": 1}))
    await db.connect()
    try:
        yield db
    finally:
        await db.close()


async def _setting(db: Database) -> str | None:
    async with db.primary.acquire() as conn:
        value: str | None = await conn.fetchval("SELECT current_setting('app.tenant_id', true)")
        assert not conn.is_in_transaction()
        return value


async def test_the_tenant_is_set_inside_and_gone_after(one_connection: Database) -> None:
    tenant = uuid.uuid4()
    async with one_connection.tenant_transaction(tenant, read=True) as conn:
        assert conn.is_in_transaction()
        assert await conn.fetchval("SELECT current_setting('app.tenant_id')") == str(tenant)
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("CREATE TEMP TABLE nope (x int)")
    assert await _setting(one_connection) in (None, "")


async def test_a_failed_tenant_transaction_is_rolled_back(one_connection: Database) -> None:
    with pytest.raises(RuntimeError):
        async with one_connection.tenant_transaction(uuid.uuid4()) as conn:
            # Even a session-level setting is undone when its transaction rolls back.
            await conn.execute("SELECT set_config('app.probe', 'written', false)")
            raise RuntimeError("the handler failed")
    async with one_connection.primary.acquire() as conn:
        assert await conn.fetchval("SELECT current_setting('app.probe', true)") in (None, "")


async def test_a_connection_released_inside_a_transaction_comes_back_clean(
    one_connection: Database,
) -> None:
    async with one_connection.primary.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(uuid.uuid4()))
    assert await _setting(one_connection) in (None, "")


async def test_a_tenant_that_is_not_a_uuid_is_refused_before_any_sql(
    one_connection: Database,
) -> None:
    with pytest.raises(ValueError):
        async with one_connection.tenant_transaction("x'; DROP TABLE devices; --"):
            pass
