"""Turning an MQTT message or an HTTP body into a writer submission: the device and tenant
checks, the payload rules, and the rejects."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from aiohttp import web

from iotcore.devices.registry import DeviceIdentity, DeviceRegistry
from iotcore.platform.context import Platform
from iotcore.platform.errors import (
    ApiError,
    Forbidden,
    MalformedJson,
    Overloaded,
    RateLimited,
    Unavailable,
    ValidationFailed,
)
from iotcore.platform.metrics import INGEST_REJECTS, RATE_LIMITED
from iotcore.platform.ratelimit import Bucket, TokenBuckets
from iotcore.platform.types import parse_uuid
from iotcore.telemetry.ingest.payload import PayloadParser, PayloadRejected
from iotcore.telemetry.ingest.store import Reject, Submission
from iotcore.telemetry.ingest.writer import TelemetryWriter

EXCERPT_BYTES = 256
TOPIC_CACHE_SIZE = 100_000
BUCKETS_CACHE_SIZE = 100_000
_MISSING = object()


def excerpt(raw: bytes) -> str:
    # PostgreSQL text cannot hold NUL: a body with raw NUL bytes is still recorded.
    return raw[:EXCERPT_BYTES].decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def parse_topic(topic: str) -> tuple[UUID, UUID] | None:
    """tenants/{tenant_id}/devices/{device_id}/telemetry -> (tenant_id, device_id)."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "tenants" or parts[2] != "devices" or parts[4] != "telemetry":
        return None
    tenant_id, device_id = parse_uuid(parts[1]), parse_uuid(parts[3])
    if tenant_id is None or device_id is None:
        return None
    return tenant_id, device_id


class TelemetryIngest:
    def __init__(
        self, platform: Platform, registry: DeviceRegistry, writer: TelemetryWriter
    ) -> None:
        settings = platform.settings
        self._platform = platform
        self.registry = registry
        self.writer = writer
        self._parser = PayloadParser(settings)
        self._topics: dict[str, tuple[UUID, UUID] | None] = {}
        self._buckets = TokenBuckets(platform.redis)
        self._fail_open = settings.rate_limit_fail_open
        self._device_rate = (settings.rate_limit_device_per_s, settings.rate_limit_device_burst)
        self._tenant_rate = (settings.rate_limit_tenant_per_s, settings.rate_limit_tenant_burst)
        self._floor = settings.rate_limit_request_floor
        self._max_cost = min(settings.rate_limit_device_burst, settings.rate_limit_tenant_burst)
        # Each device's buckets, keyed by (tenant, device): built once, not per request.
        self._rate_buckets: dict[tuple[UUID | None, UUID], list[Bucket]] = {}

    # ------------------------------------------------------------------ MQTT

    async def from_mqtt(self, topic: str, payload: bytes) -> Submission:
        """Always a submission: a bad message becomes one carrying only its reject, so that
        it is recorded, counted and acknowledged, and never stops the stream."""
        parsed_topic = self._topic(topic)
        if parsed_topic is None:
            return self._bad_topic(topic, payload)
        identity = await self.registry.resolve(parsed_topic[1])
        return self._checked(topic, payload, parsed_topic, identity, datetime.now(UTC))

    def from_mqtt_cached(self, topic: str, payload: bytes, received: datetime) -> Submission | None:
        """from_mqtt without an await, when the device is in the registry's cache (the
        consumer's fast path); None when it is not."""
        parsed_topic = self._topic(topic)
        if parsed_topic is None:
            return self._bad_topic(topic, payload)
        found, identity = self.registry.cached(parsed_topic[1])
        if not found:
            return None
        return self._checked(topic, payload, parsed_topic, identity, received)

    def from_session(
        self, identity: DeviceIdentity, topic: str, payload: bytes, received: datetime
    ) -> Submission:
        """For the embedded broker: the device authenticated at CONNECT and the topic is its
        own telemetry topic, so no look-up is needed."""
        assert identity.tenant_id is not None
        return self._checked(
            topic, payload, (identity.tenant_id, identity.device_id), identity, received
        )

    def _topic(self, topic: str) -> tuple[UUID, UUID] | None:
        parsed = self._topics.get(topic, _MISSING)
        if parsed is _MISSING:
            parsed = parse_topic(topic)
            if len(self._topics) >= TOPIC_CACHE_SIZE:
                self._topics.clear()
            self._topics[topic] = parsed
        return parsed  # type: ignore[return-value]

    def _bad_topic(self, topic: str, payload: bytes) -> Submission:
        return self._rejected("invalid_topic", "not a telemetry topic", None, None, topic, payload)

    def _checked(
        self,
        topic: str,
        payload: bytes,
        parsed_topic: tuple[UUID, UUID],
        identity: DeviceIdentity | None,
        received: datetime,
    ) -> Submission:
        topic_tenant, device_id = parsed_topic
        if identity is None or identity.tenant_id is None:
            return self._rejected(
                "unknown_device",
                "unknown or unclaimed device",
                topic_tenant,
                device_id,
                topic,
                payload,
            )
        if identity.tenant_id != topic_tenant:
            return self._rejected(
                "tenant_mismatch",
                "topic tenant is not the device's",
                topic_tenant,
                device_id,
                topic,
                payload,
            )
        try:
            parsed = self._parser.parse(payload, received)
        except PayloadRejected as exc:
            return self._rejected(
                exc.reason, exc.message, identity.tenant_id, device_id, topic, payload
            )
        if parsed.tenant_id is not None and parsed.tenant_id != str(identity.tenant_id):
            return self._rejected(
                "tenant_mismatch",
                "body tenant_id is not the device's",
                identity.tenant_id,
                device_id,
                topic,
                payload,
            )
        rejects = [
            Reject(reason, detail, identity.tenant_id, device_id, topic, excerpt(payload))
            for reason, detail in parsed.rejects
        ]
        return Submission("mqtt", identity.tenant_id, device_id, parsed.points, rejects, topic)

    def _rejected(
        self,
        reason: str,
        detail: str,
        tenant_id: UUID | None,
        device_id: UUID | None,
        topic: str | None,
        payload: bytes,
    ) -> Submission:
        reject = Reject(reason, detail, tenant_id, device_id, topic, excerpt(payload))
        return Submission("mqtt", None, None, [], [reject], topic)

    # ------------------------------------------------------------------ HTTP

    async def accept_http(self, identity: DeviceIdentity, raw: bytes) -> Submission:
        """The submission for an HTTP body, charged to the device's and the tenant's rate
        limits by its readings (at least the per-request floor, refused bodies included);
        whole-body problems are errors for the caller, recorded as rejects."""
        parsed = self._parse_http(identity, raw)
        await self.check_rate(identity, parsed.rows if isinstance(parsed, Submission) else 0)
        if isinstance(parsed, Submission):
            return parsed
        for reject in parsed.rejects:
            self._record(reject)
        raise parsed.error

    async def check_rate(self, identity: DeviceIdentity, readings: int) -> None:
        device = (identity.tenant_id, identity.device_id)
        buckets = self._rate_buckets.get(device)
        if buckets is None:
            buckets = self._device_buckets(identity)
            if len(self._rate_buckets) >= BUCKETS_CACHE_SIZE:
                self._rate_buckets.clear()
            self._rate_buckets[device] = buckets
        # More than a bucket can ever hold is charged a full bucket, so that it can pass.
        cost = min(max(self._floor, readings), self._max_cost)
        try:
            wait = await self._buckets.take(buckets, int(time.time() * 1000), cost)
        except Exception as exc:  # Redis unreachable: the configured failure mode decides
            if self._fail_open:
                return
            raise Unavailable("Rate limiting is unavailable; retry later.") from exc
        if wait > 0:
            RATE_LIMITED.labels("telemetry").inc()
            raise RateLimited(int(wait) + 1)

    def _device_buckets(self, identity: DeviceIdentity) -> list[Bucket]:
        redis = self._platform.redis
        tenant = str(identity.tenant_id)
        return [
            Bucket(redis.key("tb", "device", tenant, str(identity.device_id)), *self._device_rate),
            Bucket(redis.key("tb", "tenant", tenant), *self._tenant_rate),
        ]

    def _parse_http(self, identity: DeviceIdentity, raw: bytes) -> Submission | _Refused:
        assert identity.tenant_id is not None
        tenant_id, device_id = identity.tenant_id, identity.device_id
        try:
            parsed = self._parser.parse(raw, datetime.now(UTC))
        except PayloadRejected as exc:
            error: ApiError = (
                MalformedJson()
                if exc.reason == "malformed_json"
                else ValidationFailed(details=[{"field": "body", "problem": exc.message}])
            )
            reject = Reject(exc.reason, exc.message, tenant_id, device_id, None, excerpt(raw))
            return _Refused(error, [reject])
        if parsed.tenant_id is not None and parsed.tenant_id != str(tenant_id):
            reject = Reject(
                "tenant_mismatch",
                "body tenant_id is not the device's",
                tenant_id,
                device_id,
                None,
                excerpt(raw),
            )
            error = Forbidden("tenant_id is not this device's tenant.", code="tenant_mismatch")
            return _Refused(error, [reject])
        rejects = [
            Reject(reason, detail, tenant_id, device_id, None, excerpt(raw))
            for reason, detail in parsed.rejects
        ]
        if not parsed.points:
            error = ValidationFailed(
                details=[{"field": "body", "problem": detail} for _, detail in parsed.rejects]
            )
            return _Refused(error, rejects)
        return Submission("http", tenant_id, device_id, parsed.points, rejects)

    def _record(self, reject: Reject) -> None:
        """Queue a reject for the table without waiting; under overload it is only counted."""
        try:
            self.writer.submit_nowait(Submission("http", None, None, [], [reject]))
        except Overloaded:
            INGEST_REJECTS.labels(reject.reason).inc()


@dataclass(frozen=True)
class _Refused:
    """An HTTP body refused whole: the error to answer and the rejects to record."""

    error: ApiError
    rejects: list[Reject]


TELEMETRY_INGEST_KEY = web.AppKey("telemetry_ingest", TelemetryIngest)
