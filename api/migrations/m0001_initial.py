"""Organizations, members, API keys, scans, jobs, artifacts, legal holds, audit tables."""

from __future__ import annotations

_TABLES = """
CREATE TABLE organizations (
    id VARCHAR(40) PRIMARY KEY,
    name VARCHAR(64) NOT NULL UNIQUE,
    retention_days INT NOT NULL DEFAULT 90,
    created_at {ts} NOT NULL
);
CREATE TABLE members (
    id VARCHAR(40) PRIMARY KEY,
    org_id VARCHAR(40) REFERENCES organizations (id),
    subject VARCHAR(255) NOT NULL,
    role VARCHAR(32) NOT NULL,
    created_at {ts} NOT NULL,
    disabled_at {ts}
);
CREATE UNIQUE INDEX members_org_subject ON members (org_id, subject);
CREATE TABLE api_keys (
    id VARCHAR(40) PRIMARY KEY,
    prefix VARCHAR(32) NOT NULL UNIQUE,
    secret_hash VARCHAR(64) NOT NULL,
    member_id VARCHAR(40) NOT NULL REFERENCES members (id),
    org_id VARCHAR(40) REFERENCES organizations (id),
    role VARCHAR(32) NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts},
    revoked_at {ts}
);
CREATE INDEX api_keys_org ON api_keys (org_id);
CREATE TABLE scans (
    id VARCHAR(40) PRIMARY KEY,
    org_id VARCHAR(40) NOT NULL REFERENCES organizations (id),
    created_by VARCHAR(40) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    format VARCHAR(16) NOT NULL,
    size BIGINT NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    triangles BIGINT NOT NULL,
    legal_hold BOOLEAN NOT NULL DEFAULT FALSE,
    created_at {ts} NOT NULL
);
CREATE INDEX scans_org_created ON scans (org_id, created_at, id);
CREATE TABLE jobs (
    id VARCHAR(40) PRIMARY KEY,
    org_id VARCHAR(40) NOT NULL REFERENCES organizations (id),
    created_by VARCHAR(40) NOT NULL,
    upper_id VARCHAR(40) NOT NULL,
    lower_id VARCHAR(40) NOT NULL,
    bite_ids TEXT NOT NULL,
    options TEXT NOT NULL,
    state VARCHAR(16) NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL,
    message VARCHAR(500) NOT NULL DEFAULT '',
    created_at {ts} NOT NULL,
    started_at {ts},
    finished_at {ts}
);
CREATE INDEX jobs_org_created ON jobs (org_id, created_at, id);
CREATE TABLE artifacts (
    id VARCHAR(40) PRIMARY KEY,
    org_id VARCHAR(40) NOT NULL REFERENCES organizations (id),
    job_id VARCHAR(40) NOT NULL REFERENCES jobs (id),
    name VARCHAR(128) NOT NULL,
    size BIGINT NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    created_at {ts} NOT NULL,
    UNIQUE (job_id, name)
);
CREATE TABLE legal_holds (
    id VARCHAR(40) PRIMARY KEY,
    org_id VARCHAR(40) NOT NULL REFERENCES organizations (id),
    scan_id VARCHAR(40) NOT NULL,
    placed BOOLEAN NOT NULL,
    actor VARCHAR(64) NOT NULL,
    at {ts} NOT NULL
);
CREATE TABLE audit_events (
    id {serial},
    tenant VARCHAR(64) NOT NULL,
    sequence BIGINT NOT NULL,
    time VARCHAR(40) NOT NULL,
    actor VARCHAR(128) NOT NULL,
    source_ip VARCHAR(64) NOT NULL,
    action VARCHAR(64) NOT NULL,
    resource_type VARCHAR(32) NOT NULL,
    resource_id VARCHAR(64) NOT NULL,
    outcome VARCHAR(16) NOT NULL,
    request_id VARCHAR(64) NOT NULL,
    details TEXT NOT NULL,
    previous_hash VARCHAR(64) NOT NULL,
    hash VARCHAR(64) NOT NULL,
    UNIQUE (tenant, sequence)
);
CREATE INDEX audit_events_tenant_time ON audit_events (tenant, time);
CREATE TABLE audit_checkpoints (
    id {serial},
    tenant VARCHAR(64) NOT NULL,
    sequence BIGINT NOT NULL,
    head_hash VARCHAR(64) NOT NULL,
    time VARCHAR(40) NOT NULL,
    signature TEXT NOT NULL
);
CREATE INDEX audit_checkpoints_tenant ON audit_checkpoints (tenant, sequence);
"""

_PG_APPEND_ONLY = """
CREATE FUNCTION mesial_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'mesial: % on % refused: the audit log is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
"""

_PG_TRIGGERS = """
CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION mesial_append_only();
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION mesial_append_only();
"""

_SQLITE_TRIGGERS = """
CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, 'mesial: UPDATE on {table} refused: the audit log is append-only'); END;
CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, 'mesial: DELETE on {table} refused: the audit log is append-only'); END;
"""

AUDIT_TABLES = ("audit_events", "audit_checkpoints")

SQL = {
    "postgres": _TABLES.format(ts="TIMESTAMPTZ", serial="BIGSERIAL PRIMARY KEY")
    + _PG_APPEND_ONLY
    + "".join(_PG_TRIGGERS.format(table=t) for t in AUDIT_TABLES),
    "sqlite": _TABLES.format(ts="TIMESTAMP", serial="INTEGER PRIMARY KEY AUTOINCREMENT")
    + "".join(_SQLITE_TRIGGERS.format(table=t) for t in AUDIT_TABLES),
}
