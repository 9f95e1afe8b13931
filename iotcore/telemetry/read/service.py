"""Dashboard reads: metric list, raw pages, latest values, aggregates; ETags for the past."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from aiohttp import web

from iotcore.auth.principal import UserPrincipal
from iotcore.devices.registry import DeviceRegistry
from iotcore.platform.context import Platform
from iotcore.platform.errors import NotFound, ValidationFailed
from iotcore.platform.pagination import decode_cursor, encode_cursor
from iotcore.platform.types import rfc3339_ms, within_range
from iotcore.telemetry.derived import (
    LATEST_TTL_S,
    EtagSlot,
    HashReads,
    latest_key,
    remember_etag,
    rfc3339_ms_from_ms,
)
from iotcore.telemetry.ingest.payload import METRIC_NAME
from iotcore.telemetry.read.schemas import (
    FUNCTIONS,
    AggregateQuery,
    RawQuery,
    Window,
    parse_bucket,
    parse_time,
)

log = logging.getLogger("iotcore.telemetry.read")
DEFAULT_WINDOW = timedelta(hours=24)
MAX_BUCKETS = 10_000
# A window is "wholly in the past" once its end is older than the accepted future skew of
# incoming readings: nothing can still land in it except late replays.
PAST_MARGIN = timedelta(minutes=5)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
# Redis connections of the latest-values read (HashReads): enough for the requests one API
# process has in flight between two answers from Redis.
LATEST_READ_CONNECTIONS = 8


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @property
    def in_the_past(self) -> bool:
        return self.end <= datetime.now(UTC) - PAST_MARGIN


def time_range(window: Window, max_days: int) -> TimeRange:
    end = parse_time(window.to) if window.to else datetime.now(UTC)
    start = parse_time(window.from_) if window.from_ else end - DEFAULT_WINDOW
    if start > end:
        raise ValidationFailed.field("from", "must not be after to")
    if end - start > timedelta(days=max_days):
        raise ValidationFailed.field("from", f"the range may span at most {max_days} days")
    return TimeRange(start, end)


def _floor(moment: datetime, step: timedelta) -> datetime:
    return ORIGIN + (moment - ORIGIN) // step * step


def _ceil(moment: datetime, step: timedelta) -> datetime:
    floor = _floor(moment, step)
    return floor if floor == moment else floor + step


@dataclass(frozen=True)
class RollupSpan:
    """Where the rollups answer: whole hours [first_hour, last_hour), and whole days
    [first_day, last_day) inside them (empty unless the bucket is made of days)."""

    first_hour: datetime
    last_hour: datetime
    first_day: datetime
    last_day: datetime


def rollup_span(span: TimeRange, bucket: timedelta, retention_days: int) -> RollupSpan | None:
    """None when no rollup can serve: the bucket is not whole hours, or the window holds no
    whole hour newer than the retention horizon (older rollups may outlive their raw rows
    until the next retention run, so the raw rows answer there)."""
    if bucket % HOUR != timedelta(0):
        return None
    horizon = _floor(datetime.now(UTC) - timedelta(days=retention_days), DAY) + DAY
    first_hour = max(_ceil(span.start, HOUR), horizon)
    last_hour = _floor(span.end, HOUR)
    if first_hour >= last_hour:
        return None
    first_day, last_day = _ceil(first_hour, DAY), _floor(last_hour, DAY)
    if bucket % DAY != timedelta(0) or first_day >= last_day:
        first_day = last_day = first_hour
    return RollupSpan(first_hour, last_hour, first_day, last_day)


Ranges = list[tuple[datetime, datetime]]
# How many ranges the rollup query reads from each source (sql/telemetry_read.sql,
# aggregate_rollup, has one arm per range). aggregate_sources never needs more: with one raw
# range there are at most 2 daily and 4 hourly ones.
RAW_RANGES, HOURLY_RANGES, DAILY_RANGES = 4, 6, 3


@dataclass(frozen=True)
class AggregateSources:
    """A window split into disjoint ranges that together cover it, each read from one
    source: the raw rows, the hourly rollup or the daily rollup."""

    raw: Ranges
    hourly: Ranges
    daily: Ranges


def _merged(ranges: Ranges) -> Ranges:
    """Sorted, with overlapping or touching ranges joined and empty ones dropped."""
    out: Ranges = []
    for lo, hi in sorted(r for r in ranges if r[0] < r[1]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _minus(ranges: Ranges, cuts: Ranges) -> Ranges:
    out: Ranges = []
    cuts = _merged(cuts)
    for lo, hi in _merged(ranges):
        for cut_lo, cut_hi in cuts:
            if cut_hi <= lo or cut_lo >= hi:
                continue
            if cut_lo > lo:
                out.append((lo, cut_lo))
            lo = max(lo, cut_hi)
            if lo >= hi:
                break
        if lo < hi:
            out.append((lo, hi))
    return out


def _close_smallest_gap(ranges: Ranges) -> Ranges:
    """One range fewer: the two nearest ones joined (the hours between them read raw too)."""
    gaps = [ranges[i + 1][0] - ranges[i][1] for i in range(len(ranges) - 1)]
    i = gaps.index(min(gaps))
    return [*ranges[:i], (ranges[i][0], ranges[i + 1][1]), *ranges[i + 2 :]]


def aggregate_sources(span: TimeRange, rollups: RollupSpan, dirty: Ranges) -> AggregateSources:
    """Raw rows for the window's edges outside [first_hour, last_hour) and for the `dirty`
    hours (marked in telemetry_rollup_dirty: written since their last refresh); the daily
    rollup for the whole days [first_day, last_day) without a raw hour; the hourly rollup
    for the rest. When that takes more ranges than the query has arms, the nearest raw
    ranges are joined: reading more raw rows is slower, never wrong."""
    raw = _merged([(span.start, rollups.first_hour), *dirty, (rollups.last_hour, span.end)])
    while True:
        while len(raw) > RAW_RANGES:
            raw = _close_smallest_gap(raw)
        spoiled = [(_floor(lo, DAY), _ceil(hi, DAY)) for lo, hi in raw]
        daily = _minus([(rollups.first_day, rollups.last_day)], spoiled)
        hourly = _minus([(rollups.first_hour, rollups.last_hour)], raw + daily)
        if (len(daily) <= DAILY_RANGES and len(hourly) <= HOURLY_RANGES) or len(raw) < 2:
            return AggregateSources(raw, hourly, daily)
        raw = _close_smallest_gap(raw)


def _bounds(ranges: Ranges, slots: int) -> tuple[list[datetime], list[datetime]]:
    assert len(ranges) <= slots, ranges
    return [lo for lo, _ in ranges], [hi for _, hi in ranges]


async def aggregate_rows(
    conn: Any,
    sql: dict[str, str],
    device_id: UUID,
    metric: str,
    bucket: timedelta,
    span: TimeRange,
    flags: list[bool],
    retention_days: int,
) -> Any:
    """The aggregate as one row: "items" (the buckets as JSON objects, comma-separated) and
    "readable" (whether the tenant may read the device), from the rollups where they are
    complete, else from the raw rows. `sql`: the telemetry_read queries; `flags`: avg, min,
    max, sum, count wanted.

    Two statements: the marked hours of the window first, then the buckets with every range
    as constants, so that the planner prunes partitions and chunks (a join with the marks
    would plan the raw rows over all of them). `conn` must be in a REPEATABLE READ
    transaction, so both see the same snapshot."""
    rollups = rollup_span(span, bucket, retention_days)
    sources = None
    if rollups is not None:
        dirty = await conn.fetch(sql["rollup_dirty_ranges"], rollups.first_hour, rollups.last_hour)
        sources = aggregate_sources(span, rollups, [(r["lo"], r["hi"]) for r in dirty])
    if sources is None or not (sources.hourly or sources.daily):
        return await conn.fetchrow(
            sql["aggregate"], device_id, metric, bucket, span.start, span.end, *flags
        )
    return await conn.fetchrow(
        sql["aggregate_rollup"],
        device_id,
        metric,
        bucket,
        *flags,
        *_bounds(sources.raw, RAW_RANGES),
        *_bounds(sources.hourly, HOURLY_RANGES),
        *_bounds(sources.daily, DAILY_RANGES),
    )


class TelemetryReader:
    def __init__(self, platform: Platform, registry: DeviceRegistry) -> None:
        self._platform = platform
        self._db = platform.db
        self._sql = platform.queries("telemetry_read")
        self._redis = platform.redis
        self._registry = registry
        self._retention_days = platform.settings.telemetry_retention_days
        self._hashes = HashReads(platform.redis, LATEST_READ_CONNECTIONS)

    async def close(self) -> None:
        await self._hashes.close()

    async def ensure_visible(
        self, principal: UserPrincipal, device_id: UUID, key: str | None = None
    ) -> None:
        """404 unless the device is claimed by the caller's tenant. The registry's short-TTL
        cache (dropped on claim, reset and rotate in every replica) answers without a round
        trip; the telemetry itself is then read through the tenant-filtered views, so even a
        stale entry could not show another tenant's rows."""
        found, identity = self._registry.cached(device_id, key)
        if not found:
            identity = await self._registry.resolve(device_id, key)
        if identity is None or identity.tenant_id != principal.tenant_id:
            raise NotFound("No such device.")

    async def ensure_history_visible(self, principal: UserPrincipal, device_id: UUID) -> None:
        """Raw readings and aggregates: the device's current owner, or a tenant that held it
        before a reset. Stored telemetry stays with the tenant that owned it (API.md), so a
        former owner keeps reading its own readings, and only those: the views filter by
        tenant (docs/device-ownership.md). Checked here before an ETag is answered from
        Redis; the reads themselves ask the database in their own statement ("readable")."""
        identity = await self._registry.resolve(device_id)
        if identity is not None and identity.tenant_id == principal.tenant_id:
            return
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            readable = await conn.fetchval(self._sql["readable"], device_id)
        if not readable:
            raise NotFound("No such device.")

    async def metrics(self, principal: UserPrincipal, device_id: UUID) -> list[dict[str, Any]]:
        await self.ensure_visible(principal, device_id)
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            rows = await conn.fetch(self._sql["metrics"], device_id)
        return [dict(r) for r in rows]

    async def raw(
        self, principal: UserPrincipal, device_id: UUID, query: RawQuery, span: TimeRange
    ) -> bytes:
        """One page of `span` (time_range of the query) as the response body:
        `{"items": [...], "next_cursor": ...}`."""
        ascending = query.order == "asc"
        if query.cursor:
            position = decode_cursor(query.cursor, {"t", "m", "o"})
            if position["o"] != query.order:
                raise ValidationFailed.field("cursor", "belongs to the other order")
            try:
                after_ts = within_range(datetime.fromisoformat(position["t"]))
                after_metric = str(position["m"])
                if not METRIC_NAME.fullmatch(after_metric):
                    raise ValueError("not a metric name")
            except (TypeError, ValueError) as exc:
                raise ValidationFailed.field("cursor", "not a cursor this server issued") from exc
        elif ascending:
            after_ts, after_metric = span.start - timedelta(microseconds=1), ""
        else:
            after_ts, after_metric = span.end, ""
        args = (device_id, span.start, span.end, after_ts, after_metric, query.limit + 1)
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            page = await conn.fetchrow(self._sql[f"raw_{query.order}"], *args, query.metric)
        if not page["readable"]:
            raise NotFound("No such device.")
        next_cursor = b"null"
        if page["more"]:
            cursor = {"t": page["last_ts"].isoformat(), "m": page["last_metric"], "o": query.order}
            next_cursor = orjson.dumps(encode_cursor(cursor))
        items = (page["items"] or "").encode()
        # One copy of a page that may be 100 KB, not one per +.
        return b"".join((b'{"items":[', items, b'],"next_cursor":', next_cursor, b"}"))

    async def latest(self, principal: UserPrincipal, device_id: UUID, text: str) -> dict[str, Any]:
        """`text`: the device id as the path spelled it, canonical (str(device_id))."""
        await self.ensure_visible(principal, device_id, text)
        key = latest_key(self._redis, principal.tenant_text, text)
        cached = await self._cached_latest(key)
        if cached is not None:
            return {"device_id": text, "metrics": cached}
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            rows = await conn.fetch(self._sql["metrics"], device_id)
        metrics = {
            r["metric"]: {"ts": rfc3339_ms(r["last_ts"]), "value": r["last_value"]} for r in rows
        }
        await self._refill_latest(key, rows)
        return {"device_id": text, "metrics": metrics}

    async def _refill_latest(self, key: str, rows: list[Any]) -> None:
        """Cache-aside: the database answer fills the hash the writer keeps, so a cold or
        flushed cache costs one database read per device, not one per request. HSETNX keeps
        any newer value the writer stored meanwhile."""
        if not rows:
            return
        try:
            pipe = self._redis.client.pipeline(transaction=False)
            for r in rows:
                ts_ms = int(r["last_ts"].timestamp() * 1000)
                pipe.hsetnx(key, r["metric"], orjson.dumps([ts_ms, r["last_value"]]))
            pipe.expire(key, LATEST_TTL_S)
            await pipe.execute()
        except Exception:
            log.warning("could not refill the latest values cache")

    async def _cached_latest(self, key: str) -> dict[str, Any] | None:
        """The writer's hash; None (use the database) when it is empty or Redis is down."""
        try:
            raw = await self._hashes.hgetall(key)
        except Exception:
            log.warning("latest values cache unavailable; reading the database")
            return None
        if not raw:
            return None
        metrics = {}
        # Metric names are ASCII: byte order is the database read's order.
        for name, value in sorted(raw.items()):
            ts_ms, number = orjson.loads(value)
            metrics[name.decode()] = {"ts": rfc3339_ms_from_ms(ts_ms), "value": number}
        return metrics

    async def aggregate(
        self, principal: UserPrincipal, device_id: UUID, query: AggregateQuery, span: TimeRange
    ) -> bytes:
        """The buckets of `span` (time_range of the query) as the response body:
        `{"metric", "bucket", "items": [...]}`."""
        bucket = parse_bucket(query.bucket)
        if (span.end - span.start) / bucket > MAX_BUCKETS:
            raise ValidationFailed.field(
                "bucket", f"more than {MAX_BUCKETS} buckets: widen the bucket or narrow the range"
            )
        wanted = set(query.fn.split(","))
        flags = [fn in wanted for fn in FUNCTIONS]
        async with self._db.tenant_transaction(
            principal.tenant_id, read=True, repeatable=True
        ) as conn:
            found = await aggregate_rows(
                conn, self._sql, device_id, query.metric, bucket, span, flags, self._retention_days
            )
        if not found["readable"]:
            raise NotFound("No such device.")
        head = orjson.dumps({"metric": query.metric, "bucket": query.bucket})[:-1]
        return b"".join((head, b',"items":[', (found["items"] or "").encode(), b"]}"))

    # ------------------------------------------------------------------ ETags

    def etag_slot(
        self, principal: UserPrincipal, device_id: UUID, request: web.Request
    ) -> EtagSlot:
        query = "&".join(f"{k}={v}" for k, v in sorted(request.query.items()))
        digest = hashlib.sha256(f"{request.path}?{query}".encode()).hexdigest()[:32]
        return EtagSlot(principal.tenant_id, device_id, digest)

    async def known_etag(self, slot: EtagSlot) -> str | None:
        try:
            value = await self._redis.client.get(slot.key(self._redis))
        except Exception:
            return None
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def remember_etag(self, slot: EtagSlot, body: bytes) -> str:
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        try:
            await remember_etag(self._redis, slot, etag)
        except Exception:
            log.warning("could not cache an ETag")
        return etag


TELEMETRY_READER_KEY = web.AppKey("telemetry_reader", TelemetryReader)
