"""The Redis client parses replies with hiredis (C): redis-py falls back to its pure-Python
parser without a word when hiredis is missing, and that parser was a fifth of the API
process's instructions on a cached latest-values read (loadtests/read_instructions.py)."""

from __future__ import annotations

from iotcore.config import Settings
from iotcore.platform.redis import Redis


async def test_the_redis_client_parses_replies_with_hiredis() -> None:
    redis = Redis(Settings())
    try:
        connection = redis.client.connection_pool.make_connection()
        assert type(connection._parser).__name__ == "_AsyncHiredisParser"
    finally:
        await redis.close()
