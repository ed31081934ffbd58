"""The audit tables take no write but a new head of a chain.

Migration 1 refuses UPDATE, DELETE and TRUNCATE. That left writes that replace a row
without being one: SQLite's ``INSERT OR REPLACE``/``REPLACE`` deletes the conflicting row
without firing its DELETE trigger (unless ``recursive_triggers`` is on, a per-connection
setting), so the head event could be rewritten; and an insert could leave a gap or a
link that is not the head's hash. A ``BEFORE INSERT`` trigger now refuses any event
whose id is taken, whose sequence is not the tenant's head + 1, or whose
``previous_hash`` is not the head's hash (64 zeros for the first), and any checkpoint
whose id is taken. PostgreSQL's ``INSERT ... ON CONFLICT DO UPDATE`` already fires the
UPDATE trigger; the same head check applies there too.
"""

from __future__ import annotations

_GENESIS = "0" * 64

_SQLITE = f"""
CREATE TRIGGER audit_events_new_head BEFORE INSERT ON audit_events
WHEN EXISTS (SELECT 1 FROM audit_events WHERE id = NEW.id)
    OR NEW.sequence IS NOT COALESCE((SELECT MAX(sequence) FROM audit_events WHERE tenant = NEW.tenant), 0) + 1
    OR NEW.previous_hash IS NOT COALESCE(
        (SELECT hash FROM audit_events WHERE tenant = NEW.tenant ORDER BY sequence DESC LIMIT 1), '{_GENESIS}')
BEGIN SELECT RAISE(ABORT, 'mesial: INSERT on audit_events refused: not a new head (the audit log is append-only)'); END;
CREATE TRIGGER audit_checkpoints_no_replace BEFORE INSERT ON audit_checkpoints
WHEN EXISTS (SELECT 1 FROM audit_checkpoints WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'mesial: INSERT on audit_checkpoints refused: the audit log is append-only'); END;
"""

_POSTGRES = f"""
CREATE FUNCTION mesial_audit_new_head() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_sequence BIGINT;
    head_hash VARCHAR(64);
BEGIN
    IF EXISTS (SELECT 1 FROM audit_events WHERE id = NEW.id) THEN
        RAISE EXCEPTION 'mesial: INSERT on audit_events refused: id taken (the audit log is append-only)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT sequence, hash INTO head_sequence, head_hash FROM audit_events
        WHERE tenant = NEW.tenant ORDER BY sequence DESC LIMIT 1;
    IF NOT FOUND THEN
        head_sequence := 0;
        head_hash := '{_GENESIS}';
    END IF;
    IF NEW.sequence IS DISTINCT FROM head_sequence + 1 OR NEW.previous_hash IS DISTINCT FROM head_hash THEN
        RAISE EXCEPTION 'mesial: INSERT on audit_events refused: not a new head (the audit log is append-only)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_events_new_head BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION mesial_audit_new_head();
CREATE FUNCTION mesial_audit_no_replace() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM audit_checkpoints WHERE id = NEW.id) THEN
        RAISE EXCEPTION 'mesial: INSERT on audit_checkpoints refused: id taken (the audit log is append-only)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_checkpoints_no_replace BEFORE INSERT ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION mesial_audit_no_replace();
"""

SQL = {"postgres": _POSTGRES, "sqlite": _SQLITE}
