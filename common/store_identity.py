"""Each tenant's own object-store identity: read and write under ``tenants/<org>/``, nothing else.

Aligner Jobs run in the tenant's namespace with the store credentials the operator puts
in a Secret there. Those credentials belong to an identity of that tenant alone: user
``mesial-org-<org>`` with one inline policy that allows ``s3:GetObject``/``s3:PutObject``/
``s3:AbortMultipartUpload`` on ``<bucket>/tenants/<org>/*`` and ``s3:ListBucket`` only
with a ``tenants/<org>/`` prefix. No delete, no tagging, no other prefix, no bucket
administration: a Job's credentials read and write its own tenant's ciphertext and no one
else's (the data is envelope-encrypted with the tenant's Vault key on top).

Identities are managed through the store's IAM API (``CreateUser``, ``PutUserPolicy``,
``CreateAccessKey``, ...), signed with the platform's store credentials. SeaweedFS serves
it on its S3 port (``-s3.iam``, writes enabled by ``-s3.iam.readOnly=false``) and
evaluates the policy per request, the ``s3:prefix`` condition included; AWS serves it at
its IAM endpoint (``store.iam_endpoint_url``). The calls are synchronous (botocore);
async callers use ``asyncio.to_thread``. The operator calls :meth:`ensure` when it
provisions or checks an Organization and :meth:`remove` when it deletes one; in local mode
the API's executor calls :meth:`ensure` before each job and gives the job those credentials.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import botocore.config
import botocore.exceptions
import botocore.session

from mesial.common.errors import StorageError, StoreUnavailable
from mesial.common.settings import StoreSettings
from mesial.common.tenancy import tenant_prefix, validate_org_name

log = logging.getLogger("mesial.store_identity")

POLICY_NAME = "mesial-tenant"
OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload")
# How long ensure() waits for a new access key to be accepted by the store (SeaweedFS applies
# identity changes asynchronously, within a second or so).
ACTIVATION_S = 15.0


def user_name_for(org: str) -> str:
    """The store identity (IAM user) of an Organization."""
    return f"mesial-org-{validate_org_name(org)}"


@dataclass(frozen=True)
class StoreCredentials:
    """An access key pair of a tenant's store identity (the secret never appears in a repr)."""

    access_key: str
    secret_key: str = field(repr=False)


def tenant_policy(org: str, bucket: str) -> dict[str, Any]:
    """The one inline policy of a tenant's identity: its own prefix, objects read and written."""
    prefix = tenant_prefix(org)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": list(OBJECT_ACTIONS), "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*"]},
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
            },
        ],
    }


def _listed(value: Any) -> list[Any]:
    return sorted(value) if isinstance(value, list) else [value]


def normalized_policy(document: Any) -> list[tuple[str, ...]]:
    """A policy document in a comparable form (stores shorten one-element lists to strings)."""
    if isinstance(document, str):
        document = json.loads(document)
    statements = document.get("Statement", []) if isinstance(document, dict) else []
    if isinstance(statements, dict):
        statements = [statements]
    found = []
    for statement in statements:
        condition = {
            op: {key: _listed(values) for key, values in dict(terms).items()}
            for op, terms in dict(statement.get("Condition") or {}).items()
        }
        found.append(
            (
                str(statement.get("Effect")),
                json.dumps(_listed(statement.get("Action"))),
                json.dumps(_listed(statement.get("Resource"))),
                json.dumps(condition, sort_keys=True),
            )
        )
    return sorted(found)


class TenantStoreIdentities:
    """Creates, checks and removes tenants' store identities through the store's IAM API."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        session = botocore.session.get_session()
        config = botocore.config.Config(
            connect_timeout=settings.timeout_s,
            read_timeout=settings.timeout_s,
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        )
        self.iam: Any = session.create_client(
            "iam",
            endpoint_url=settings.iam_endpoint_url or settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key.get_secret_value(),
            aws_secret_access_key=settings.secret_key.get_secret_value(),
            verify=self._verify(),
            config=config,
        )

    def _verify(self) -> bool | str:
        if not self.settings.verify_tls:
            return False
        return str(self.settings.ca_cert) if self.settings.ca_cert else True

    # -- queries ---------------------------------------------------------------------------
    def exists(self, org: str) -> bool:
        """Whether the tenant's identity exists in the store."""
        with _translated("read the identity"):
            try:
                self.iam.get_user(UserName=user_name_for(org))
            except botocore.exceptions.ClientError as exc:
                if _code(exc) == "NoSuchEntity":
                    return False
                raise
        return True

    def works(self, org: str, credentials: StoreCredentials) -> bool:
        """Whether ``credentials`` are accepted by the store for the tenant's own prefix."""
        client = self._s3(credentials)
        try:
            client.list_objects_v2(Bucket=self.bucket, Prefix=tenant_prefix(org), MaxKeys=1)
        except botocore.exceptions.ClientError:
            return False
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StoreUnavailable(f"object store unreachable: {type(exc).__name__}") from exc
        finally:
            client.close()
        return True

    # -- provisioning ----------------------------------------------------------------------
    def ensure(self, org: str, current: StoreCredentials | None = None) -> StoreCredentials:
        """The tenant's identity with its policy, and working credentials of it (idempotent).

        ``current`` (what the tenant's Secret holds) is kept when it is a key of this
        identity that the store accepts; otherwise every key of the identity is deleted and
        a new one is created, and returned once the store accepts it.
        """
        user = user_name_for(org)
        if not self.exists(org):
            with _translated("create the identity"):
                self.iam.create_user(UserName=user)
        want = tenant_policy(org, self.bucket)
        if self._policy(user) != normalized_policy(want):
            with _translated("write the identity's policy"):
                self.iam.put_user_policy(UserName=user, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(want))
        keys = self._keys(user)
        if current is not None and current.access_key in keys and self.works(org, current):
            return current
        for key in keys:
            with _translated("delete a stale access key"):
                self.iam.delete_access_key(UserName=user, AccessKeyId=key)
        with _translated("create an access key"):
            made = self.iam.create_access_key(UserName=user)["AccessKey"]
        fresh = StoreCredentials(str(made["AccessKeyId"]), str(made["SecretAccessKey"]))
        deadline = time.monotonic() + ACTIVATION_S
        while not self.works(org, fresh):
            if time.monotonic() > deadline:
                log.warning("store identity %s: new access key not accepted yet after %.0f s", user, ACTIVATION_S)
                break
            time.sleep(0.2)
        return fresh

    def remove(self, org: str) -> bool:
        """Delete the tenant's identity, its keys and its policy; False if there was none."""
        user = user_name_for(org)
        if not self.exists(org):
            return False
        for key in self._keys(user):
            with _translated("delete an access key"), _unless_gone():
                self.iam.delete_access_key(UserName=user, AccessKeyId=key)
        with _translated("delete the identity's policy"), _unless_gone():
            self.iam.delete_user_policy(UserName=user, PolicyName=POLICY_NAME)
        with _translated("delete the identity"), _unless_gone():
            self.iam.delete_user(UserName=user)
        return True

    # -- helpers ---------------------------------------------------------------------------
    def _policy(self, user: str) -> list[tuple[str, ...]] | None:
        with _translated("read the identity's policy"):
            try:
                response = self.iam.get_user_policy(UserName=user, PolicyName=POLICY_NAME)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) == "NoSuchEntity":
                    return None
                raise
        try:
            return normalized_policy(response.get("PolicyDocument"))
        except (ValueError, TypeError, AttributeError):
            return None

    def _keys(self, user: str) -> list[str]:
        with _translated("list access keys"):
            listed = self.iam.list_access_keys(UserName=user).get("AccessKeyMetadata", [])
        return [str(entry["AccessKeyId"]) for entry in listed]

    def _s3(self, credentials: StoreCredentials) -> Any:
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.settings.endpoint_url,
            region_name=self.settings.region,
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
            verify=self._verify(),
            config=botocore.config.Config(
                connect_timeout=self.settings.timeout_s,
                read_timeout=self.settings.timeout_s,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
                signature_version="s3v4",
            ),
        )


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _unless_gone() -> Iterator[None]:
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """botocore's errors as the storage error tree, saying which step failed (never a secret)."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code = _code(exc)
        message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
        raise StorageError(f"store identity: cannot {what}: {code} {message}".strip()) from exc
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        raise StoreUnavailable(f"store identity: cannot {what}: {type(exc).__name__}") from exc
