"""RetentionPolicy ``status.pendingReceipts`` on a real API server: the CRD's structural schema
keeps what the operator writes there (an unknown status field would be pruned silently, and a
receipt owed with it), and bounds it."""

from __future__ import annotations

import json

from tests.e2e_cluster.conftest import Kube, Release

ENTRY = {
    "resourceType": "scan",
    "resourceId": "scn_0123456789abcdef",
    "planned": 2,
    "time": "2026-12-06T07:40:00.123456Z",
    "details": {"objects_deleted": 2, "objects_held": 0, "max_age_days": 30, "policy": "retention"},
    "attempts": 3,
    "lastError": "audit collector unreachable: TimeoutError",
}


def test_pending_receipts_survive_the_api_servers_pruning_and_are_bounded(kube: Kube, release: Release) -> None:
    policy = {"apiVersion": "mesial.dev/v1alpha1", "kind": "RetentionPolicy",
              "metadata": {"name": "owed", "namespace": "default"}, "spec": {"maxAgeDays": 30}}  # fmt: skip
    kube.apply(policy)
    try:
        patch = json.dumps({"status": {"pendingReceipts": [ENTRY, {"resourceType": "job", "resourceId": "job_1"}]}})
        kube("patch", "retentionpolicy", "owed", "-n", "default", "--subresource=status", "--type=merge", "-p", patch)
        kept = kube.json("get", "retentionpolicy", "owed", "-n", "default")["status"]["pendingReceipts"]
        assert kept == [ENTRY, {"resourceType": "job", "resourceId": "job_1"}]
        too_many = json.dumps({"status": {"pendingReceipts": [ENTRY] * 101}})
        result = kube("patch", "retentionpolicy", "owed", "-n", "default", "--subresource=status", "--type=merge",
                      "-p", too_many, check=False)  # fmt: skip
        assert result.returncode != 0 and "must have at most 100 items" in result.stderr, result.stderr
    finally:
        kube("delete", "retentionpolicy", "owed", "-n", "default", "--wait=false", check=False)
