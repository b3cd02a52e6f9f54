-- The read-only PostgreSQL role for a Plexus node on an OMOP CDM warehouse,
-- with the grants deploy/omop/node.toml needs. Run it as a superuser (or a
-- role with CREATEROLE that may grant SELECT on these tables), connected to
-- the CDM database:
--
--   psql -X -v ON_ERROR_STOP=1 -d cdm -v db=cdm \
--        -v cdm_schema=cdm -v vocab_schema=vocab -v consent_schema=plexus \
--        -v role=plexus_node -v pw='...' -f readonly-role.sql
--
-- psql variables (all required):
--   db              the database connected to (-d): checked, granted CONNECT
--   cdm_schema      the CDM tables (data.postgres.schema)
--   vocab_schema    concept, concept_ancestor (data.postgres.vocabulary_schema)
--   consent_schema  consent, opt_out (data.postgres.consent.schema)
--   role            the node's login role (the user in data.postgres.url)
--   pw              its password (the node reads it from password_file)
--   alter           optional: -v alter=1 to reset an existing role (below)
--
-- Grants: CONNECT on the database, USAGE on the three schemas, SELECT on
-- exactly these tables and nothing else:
--   CDM_SCHEMA.person, observation_period, condition_occurrence,
--   drug_exposure, measurement, observation, death
--   VOCAB_SCHEMA.concept, concept_ancestor
--   CONSENT_SCHEMA.consent, opt_out
-- Map another table in node.toml and add its GRANT here. Keep consent in
-- files instead ([consent] in node.toml) and delete the consent lines.
--
-- All or nothing: the script is one transaction and stops at the first
-- error (psql exits 3), so a missing table or schema leaves no role and no
-- grant behind. psql's -X skips ~/.psqlrc, whose settings could otherwise
-- change that; the script also sets ON_ERROR_ROLLBACK off itself.
--
-- A role of that name that exists already is an error: drop it first
-- (DROP OWNED BY role; DROP ROLE role; in every database it has grants in),
-- or rerun with -v alter=1, which keeps the role, sets its password and
-- settings again, revokes whatever it may read in the three schemas and
-- grants the list above. Either way the result is the same role.
--
-- The node's sessions are read only by themselves; the role adds
-- default_transaction_read_only = on and a statement_timeout, so even a
-- session that forgets to ask is read only. The node warns at start-up
-- when its role could write to a mapped table (refuses with
-- data.postgres.refuse_writable_role = true).
--
-- The password travels in the CREATE ROLE statement: a server that logs
-- DDL (log_statement = 'ddl' or 'all') writes it to its log. There, set a
-- placeholder here and the real one afterwards with psql's \password.

\set ON_ERROR_STOP on
\set ON_ERROR_ROLLBACK off

-- Every variable must be set: psql would otherwise paste `:"role"` into
-- the SQL as it is.
\if :{?db} \else \echo 'readonly-role.sql: set the database connected to: -v db=NAME' \set missing 1 \endif
\if :{?cdm_schema} \else \echo 'readonly-role.sql: set the CDM schema: -v cdm_schema=NAME' \set missing 1 \endif
\if :{?vocab_schema} \else \echo 'readonly-role.sql: set the vocabulary schema: -v vocab_schema=NAME' \set missing 1 \endif
\if :{?consent_schema} \else \echo 'readonly-role.sql: set the consent schema: -v consent_schema=NAME' \set missing 1 \endif
\if :{?role} \else \echo 'readonly-role.sql: set the role to create: -v role=NAME' \set missing 1 \endif
\if :{?pw} \else \echo 'readonly-role.sql: set its password: -v pw=PASSWORD' \set missing 1 \endif
\if :{?alter} \else \set alter off \endif
\if :alter \set alter on \else \set alter off \endif
\if :{?missing}
DO $$ BEGIN RAISE EXCEPTION 'readonly-role.sql: psql variables are missing (named above); nothing was changed'; END $$;
\endif

BEGIN;

-- The checks a DO block makes, handed over as transaction-local settings
-- (psql does not interpolate variables inside a dollar-quoted body).
SELECT set_config('plexus_role.db', :'db', true) AS db_setting,
       set_config('plexus_role.role', :'role', true) AS role_setting,
       set_config('plexus_role.alter', :'alter', true) AS alter_setting
\gset
DO $check$
DECLARE
    db   text := current_setting('plexus_role.db');
    r    text := current_setting('plexus_role.role');
    alt  bool := current_setting('plexus_role.alter')::bool;
    have pg_roles%ROWTYPE;
BEGIN
    IF db <> current_database() THEN
        RAISE EXCEPTION 'readonly-role.sql: -v db=% but psql is connected to database %', db, current_database()
            USING HINT = 'connect to the database the grants are for (psql -d ' || db || ') or correct -v db';
    END IF;
    SELECT * INTO have FROM pg_roles WHERE rolname = r;
    IF FOUND AND NOT alt THEN
        RAISE EXCEPTION 'readonly-role.sql: role % exists already; nothing was changed', r
            USING HINT = 'drop it first (DROP OWNED BY ' || quote_ident(r) || '; DROP ROLE ' || quote_ident(r)
                || ';) or rerun with -v alter=1 to reset its password, settings and grants';
    END IF;
    IF NOT FOUND AND alt THEN
        RAISE EXCEPTION 'readonly-role.sql: -v alter=1 but role % does not exist; nothing was changed', r
            USING HINT = 'leave out -v alter=1 to create it';
    END IF;
    IF FOUND AND (have.rolsuper OR have.rolreplication OR have.rolbypassrls) THEN
        RAISE EXCEPTION 'readonly-role.sql: role % is a superuser, a replication role or bypasses row security; nothing was changed', r
            USING HINT = 'a node needs a plain role: drop this one and create it again without -v alter=1';
    END IF;
END
$check$;

\if :alter
ALTER ROLE :"role" WITH LOGIN PASSWORD :'pw'
    NOCREATEDB NOCREATEROLE NOINHERIT
    CONNECTION LIMIT 8;
-- Whatever it may read in these schemas now, it reads only the list below.
REVOKE ALL ON ALL TABLES IN SCHEMA :"cdm_schema", :"vocab_schema", :"consent_schema" FROM :"role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA :"cdm_schema", :"vocab_schema", :"consent_schema" FROM :"role";
\else
-- NOINHERIT: a role it is later made a member of adds nothing to its
-- sessions unless they SET ROLE (the node never does).
-- CONNECTION LIMIT: data.postgres.pool_size (4) and the health probe.
CREATE ROLE :"role" LOGIN PASSWORD :'pw'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 8;
\endif

-- Belt and braces: even a session that forgets to ask is read only.
ALTER ROLE :"role" SET default_transaction_read_only = on;
ALTER ROLE :"role" SET statement_timeout = '60s';

GRANT CONNECT ON DATABASE :"db" TO :"role";
GRANT USAGE ON SCHEMA :"cdm_schema", :"vocab_schema", :"consent_schema" TO :"role";

GRANT SELECT ON TABLE :"cdm_schema".person,
                      :"cdm_schema".observation_period,
                      :"cdm_schema".condition_occurrence,
                      :"cdm_schema".drug_exposure,
                      :"cdm_schema".measurement,
                      :"cdm_schema".observation,
                      :"cdm_schema".death
    TO :"role";
GRANT SELECT ON TABLE :"vocab_schema".concept,
                      :"vocab_schema".concept_ancestor
    TO :"role";
GRANT SELECT ON TABLE :"consent_schema".consent,
                      :"consent_schema".opt_out
    TO :"role";

-- No CREATE in the schemas it reads. (This revokes a grant to the role
-- itself; a schema where PUBLIC may create, as `public` before PostgreSQL
-- 15, needs REVOKE CREATE ON SCHEMA ... FROM PUBLIC by its owner.)
REVOKE CREATE ON SCHEMA :"cdm_schema", :"vocab_schema", :"consent_schema" FROM :"role";

COMMIT;

\echo 'readonly-role.sql: role' :"role" 'may read the 11 tables of deploy/omop/node.toml, read only'
