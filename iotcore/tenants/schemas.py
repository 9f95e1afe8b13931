"""Request and response models of tenant deletion, device purges and jobs."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from iotcore.platform.types import Timestamp


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeleteTenantRequest(Strict):
    # The tenant's name, typed out: deleting a tenant cannot be undone.
    confirmation: str = Field(min_length=1, max_length=200)


class PurgeDeviceRequest(Strict):
    confirmation: Literal["PURGE"]
    # Only readings older than this; all of them when absent.
    before: AwareDatetime | None = None


class JobAccepted(BaseModel):
    job_id: UUID


class JobOut(BaseModel):
    job_id: UUID
    kind: Literal["purge_tenant", "purge_device"]
    status: Literal["queued", "running", "done", "failed"]
    # {"phase": ..., "phases": [...], "deleted": {what: rows}}
    progress: dict[str, Any]
    error: str | None = None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
