"""The tenant's Vault side: its key and login role (no policy), through the tenancy service in ``common/``."""

from __future__ import annotations

import asyncio

from mesial.common.provisioning import TenantProvisioner, VaultTenant
from mesial.common.settings import OperatorSettings
from mesial.operator.sync.organization.model import OrgView


async def sync_vault(provisioner: TenantProvisioner, org: OrgView, settings: OperatorSettings) -> VaultTenant:
    return await asyncio.to_thread(
        provisioner.provision,
        org.name,
        service_account=settings.aligner_service_account,
        rotation_period=org.rotation_period,
    )
