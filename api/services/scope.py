"""The tenant-scoped accessor: the one way routes reach tenant data.

The organization comes from the principal (that is, from the credential). Every query
of scans, jobs and artifacts is built here, filtered by that organization and, for a
clinician, by the member who created the case. A row of another tenant is simply not
found: the caller gets 404 and learns nothing, not even that the id exists.
"""

from __future__ import annotations

import re
from typing import Any

from mesial.api.errors import Forbidden, NotFound
from mesial.api.models import Artifact, Job, Scan
from mesial.api.types import Principal, Role

OPAQUE_ID_RE = re.compile(r"^[a-z]{3}_[0-9a-f]{24}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # artifact names


class TenantScope:
    def __init__(self, principal: Principal) -> None:
        if principal.org_id is None or principal.org_name is None:
            raise Forbidden("this credential belongs to no organization")
        self.principal = principal
        self.org_id: str = principal.org_id
        self.org: str = principal.org_name
        self.own_only = principal.role is Role.clinician

    def _cases(self, model: Any) -> Any:
        query = model.filter(org_id=self.org_id)
        if self.own_only:
            query = query.filter(created_by=self.principal.member_id)
        return query

    def scans(self) -> Any:
        return self._cases(Scan)

    def jobs(self) -> Any:
        return self._cases(Job)

    async def scan(self, scan_id: str) -> Scan:
        row: Scan | None = await self.scans().get_or_none(id=scan_id) if OPAQUE_ID_RE.fullmatch(scan_id) else None
        if row is None:
            raise NotFound("scan not found")
        return row

    async def job(self, job_id: str) -> Job:
        row: Job | None = await self.jobs().get_or_none(id=job_id) if OPAQUE_ID_RE.fullmatch(job_id) else None
        if row is None:
            raise NotFound("job not found")
        return row

    async def artifacts(self, job_id: str) -> list[Artifact]:
        job = await self.job(job_id)
        return await Artifact.filter(org_id=self.org_id, job_id=job.id).order_by("name")

    async def artifact(self, job_id: str, name: str) -> Artifact:
        job = await self.job(job_id)
        row = (
            await Artifact.get_or_none(org_id=self.org_id, job_id=job.id, name=name)
            if _NAME_RE.fullmatch(name)
            else None
        )
        if row is None:
            raise NotFound("artifact not found")
        return row
