-- A read-only PostgreSQL role for a Plexus node (run as the warehouse owner
-- or a superuser, e.g. `psql -d cdm -v pw="'...'" -f readonly-role.sql`).
--
-- The node needs SELECT on the tables named in [data.postgres] (person,
-- the event tables its variables come from, and the consent and opt-out
-- tables if consent lives in the database) and nothing else. Its sessions
-- also start with default_transaction_read_only = on and a
-- statement_timeout, and it warns at start-up when the role could write
-- (refuses with data.postgres.refuse_writable_role = true).

CREATE ROLE plexus_node LOGIN PASSWORD :pw
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION
    CONNECTION LIMIT 8;

-- Belt and braces: even a session that forgets to ask is read only.
ALTER ROLE plexus_node SET default_transaction_read_only = on;
ALTER ROLE plexus_node SET statement_timeout = '60s';

-- Adjust the database, schema and table names to the warehouse.
GRANT CONNECT ON DATABASE cdm TO plexus_node;
GRANT USAGE ON SCHEMA public TO plexus_node;
GRANT SELECT ON public.person,
                public.measurement,
                public.condition_occurrence,
                public.observation,
                public.visit_occurrence,
                public.consent,
                public.opt_out
    TO plexus_node;

-- No default privileges, no sequences, no functions beyond what PUBLIC has.
REVOKE CREATE ON SCHEMA public FROM plexus_node;
