-- 002 (SQLite): make the audit trail append-only at the database level too.
-- The hash chain detects tampering; these triggers stop the accidental kind.
-- A PostgreSQL dialect ships 002_audit_append_only.postgres.sql instead.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
