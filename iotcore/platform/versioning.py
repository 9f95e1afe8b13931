"""Deprecation of an operation within v1 (docs/versioning.md): the headers its responses
carry, RFC 9745 `Deprecation` and RFC 8594 `Sunset`, with a link to the policy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

POLICY_LINK = '</api/v1/docs>; rel="deprecation"'


@dataclass(frozen=True)
class Deprecation:
    since: datetime  # when it was deprecated (timezone-aware)
    sunset: datetime | None = None  # when it stops answering, once decided

    def headers(self) -> dict[str, str]:
        headers = {"Deprecation": f"@{int(self.since.timestamp())}", "Link": POLICY_LINK}
        if self.sunset is not None:
            headers["Sunset"] = format_datetime(self.sunset, usegmt=True)
        return headers
