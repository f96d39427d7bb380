-- 002 (PostgreSQL): same guarantee as the SQLite variant. Not exercised by the
-- test-suite yet (no PostgreSQL dialect is wired); kept so the numbering stays shared.
CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
