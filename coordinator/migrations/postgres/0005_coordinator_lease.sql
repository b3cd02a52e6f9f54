-- Active/standby coordinators on one database: one row says who is active
-- (holder), under which fencing epoch, until when (expires_at, in the
-- database's clock, milliseconds since 1970). A coordinator takes over an
-- expired lease by raising the epoch.
CREATE TABLE coordinator_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL
);

-- Fencing: every write to the coordinator's state checks, in the database,
-- that the writer's session epoch (`plexus.epoch`, set when the active
-- coordinator opens its connections) is the lease's. FOR SHARE makes a
-- takeover wait for writes in flight, and every write after the takeover
-- by the old holder fails. Without a lease row (no coordinator ever held
-- one) nothing is fenced.
CREATE FUNCTION coordinator_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    held BIGINT;
    mine TEXT := NULLIF(current_setting('plexus.epoch', true), '');
BEGIN
    SELECT epoch INTO held FROM coordinator_lease WHERE id = 1 FOR SHARE;
    IF held IS NOT NULL AND (mine IS NULL OR mine::BIGINT <> held) THEN
        RAISE EXCEPTION 'this coordinator''s epoch (%) is not the lease''s (%): another coordinator took over, so this one must stop writing', COALESCE(mine, 'none'), held
            USING ERRCODE = 'PX001';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER fence_studies BEFORE INSERT OR UPDATE OR DELETE ON studies
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_fence();
CREATE TRIGGER fence_queries BEFORE INSERT OR UPDATE OR DELETE ON queries
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_fence();
CREATE TRIGGER fence_jobs BEFORE INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_fence();
CREATE TRIGGER fence_audit_events BEFORE INSERT OR UPDATE OR DELETE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_fence();
CREATE TRIGGER fence_audit_checkpoints BEFORE INSERT OR UPDATE OR DELETE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_fence();
CREATE TRIGGER fence_privacy_charges BEFORE INSERT OR UPDATE OR DELETE ON privacy_charges
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_fence();
CREATE TRIGGER fence_node_budgets BEFORE INSERT OR UPDATE OR DELETE ON node_budgets
    FOR EACH STATEMENT EXECUTE FUNCTION coordinator_fence();
