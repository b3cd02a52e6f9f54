#!/usr/bin/env bash
# Checks the read-only role scripts against a live PostgreSQL server:
#   deploy/omop/readonly-role.sql      (schemas cdm, vocab, consent)
#   deploy/postgres/readonly-role.sql  (one schema)
#
# For each script, in scratch databases of the server at
# $PLEXUS_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test;
# the user there must be a superuser), with schema, role and password names
# that need quoting:
#   - the script creates the role; connected as that role, SELECT works on
#     every table it grants, and those SELECT grants are the role's only
#     table privileges; a table not on the list is not readable; INSERT
#     fails (the session is read only, and without the read-only setting
#     the role lacks the privilege); the role cannot create in the schemas
#     and has no attribute beyond LOGIN;
#   - run again it stops: the role exists already; with -v alter=1 it
#     resets the role, taking back a stray grant;
#   - with a psql variable missing, or against a database missing one of
#     the tables, it exits non-zero and leaves no role behind.
# Every role and database it makes is dropped on exit.
#
#   deploy/omop/check-role.sh
#
# Without psql or a server that answers, it says so and exits 77 (skipped);
# under CI=true it fails instead, so CI never passes by skipping.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

URL="${PLEXUS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

skip() {
    echo "skipped: $*"
    if [ "${CI:-}" = "true" ]; then
        echo "(CI=true: the role scripts must be checked)"
        exit 1
    fi
    exit 77
}

# postgres://[user[:password]@]host[:port][/database][?options]
if [[ ! "$URL" =~ ^(postgres|postgresql)://(([^@/]*)@)?([^/?]*)(/([^?]*))?(\?.*)?$ ]]; then
    echo "PLEXUS_TEST_DATABASE_URL is not a postgres://user@host:port/database URL"
    exit 1
fi
admin_userinfo="${BASH_REMATCH[3]}"
hostport="${BASH_REMATCH[4]}"
options="${BASH_REMATCH[7]}"
shown="postgres://${admin_userinfo%%:*}@${hostport}/${BASH_REMATCH[6]}"

command -v psql >/dev/null 2>&1 ||
    skip "psql is not installed (Debian: apt-get install postgresql-client)"
psql -X -q -At -d "$URL" -c 'SELECT 1' >/dev/null 2>&1 ||
    skip "no PostgreSQL answers at $shown (set PLEXUS_TEST_DATABASE_URL)"

urlencode() {
    local s="$1" out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c="${s:i:1}"
        case "$c" in
        [A-Za-z0-9._~-]) out+="$c" ;;
        *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    printf '%s' "$out"
}

# The server's URL for database $1, as the admin or as role $2 with password $3.
url_for() {
    local userinfo="$admin_userinfo"
    if [ $# -ge 3 ]; then
        userinfo="$(urlencode "$2"):$(urlencode "$3")"
    fi
    printf 'postgres://%s@%s/%s%s' "$userinfo" "$hostport" "$(urlencode "$1")" "$options"
}

admin() { # admin DB SQL...: runs each statement as the admin, prints rows unaligned
    local db="$1" sql args=()
    shift
    for sql in "$@"; do
        args+=(-c "$sql")
    done
    psql -X -q -At -v ON_ERROR_STOP=1 -d "$(url_for "$db")" "${args[@]}"
}

# The names: unique per run (roles are cluster-wide), needing quotes.
run="$$_${RANDOM}"
databases=()
roles=()
cleanup() {
    local d r
    for d in "${databases[@]}"; do
        admin postgres "DROP DATABASE IF EXISTS \"$d\"" >/dev/null 2>&1 ||
            echo "could not drop scratch database $d"
    done
    for r in "${roles[@]}"; do
        admin postgres "DROP ROLE IF EXISTS \"$r\"" >/dev/null 2>&1 ||
            echo "could not drop scratch role $r"
    done
}
trap cleanup EXIT

failures=0
ok() { echo "ok   $*"; }
fail() {
    echo "FAIL $*"
    failures=$((failures + 1))
}

# make_db DB SCHEMA.TABLE...: a database holding these tables (a person_id
# column each), reachable only by roles granted CONNECT.
make_db() {
    local db="$1" t s sql=""
    local -A made=()
    shift
    databases+=("$db")
    admin postgres "CREATE DATABASE \"$db\"" "REVOKE CONNECT ON DATABASE \"$db\" FROM PUBLIC"
    for t in "$@"; do
        s="${t%%.*}"
        if [ -z "${made[$s]:-}" ]; then
            made[$s]=1
            sql+="CREATE SCHEMA \"$s\";"
        fi
        sql+="CREATE TABLE \"$s\".\"${t#*.}\" (person_id bigint);"
    done
    admin "$db" "$sql"
}

role_exists() {
    [ "$(admin postgres "SELECT count(*) FROM pg_roles WHERE rolname = '$1'")" = 1 ]
}

# check SCRIPT LABEL VARIABLES GRANTED NOT_GRANTED MISSING: every check for one script.
#   VARIABLES    psql -v options naming the schemas (array name)
#   GRANTED      SCHEMA.TABLE the script must grant (array name)
#   NOT_GRANTED  SCHEMA.TABLE it must not (array name)
#   MISSING      one of GRANTED, left out of a second database
check() {
    local script="$1" label="$2" missing="$6"
    local -n vars="$3" granted="$4" others="$5"
    local db="plexus_role_check_${run}_${label}"
    local role="plexus-node-check ${run} ${label}"
    local pw="pw'${RANDOM}\"x y"
    local t s out status
    roles+=("$role")
    echo "== $script"

    make_db "$db" "${granted[@]}" "${others[@]}"
    local run_script=(psql -X -v ON_ERROR_STOP=1 -d "$(url_for "$db")" -v "db=$db" "${vars[@]}"
        -v "role=$role" -v "pw=$pw" -f "$script")

    if out=$("${run_script[@]}" 2>&1); then
        ok "creates role \"$role\" in database $db"
    else
        fail "the script failed on a complete database:"
        echo "$out"
        return
    fi

    # as_role SQL...: each statement its own transaction, in one session.
    as_role() {
        local sql args=()
        for sql in "$@"; do
            args+=(-c "$sql")
        done
        psql -X -q -At -v ON_ERROR_STOP=1 -d "$(url_for "$db" "$role" "$pw")" "${args[@]}" 2>&1
    }

    local readable=0
    for t in "${granted[@]}"; do
        s="\"${t%%.*}\".\"${t#*.}\""
        if out=$(as_role "SELECT count(*) FROM $s"); then
            readable=$((readable + 1))
        else
            fail "the role cannot read $t: $out"
        fi
    done
    [ "$readable" = "${#granted[@]}" ] && ok "the role reads each of the ${#granted[@]} tables granted"

    local expected got
    expected=$(printf '%s SELECT\n' "${granted[@]}" | LC_ALL=C sort)
    got=$(admin "$db" "SELECT table_schema || '.' || table_name || ' ' || privilege_type
                         FROM information_schema.table_privileges
                        WHERE grantee = '$role' ORDER BY 1" | LC_ALL=C sort)
    if [ "$got" = "$expected" ]; then
        ok "its table privileges are exactly SELECT on those tables"
    else
        fail "its table privileges differ from SELECT on the list:"
        diff <(echo "$expected") <(echo "$got") || true
    fi

    for t in "${others[@]}"; do
        s="\"${t%%.*}\".\"${t#*.}\""
        if out=$(as_role "SELECT count(*) FROM $s"); then
            fail "the role reads $t, which is not on the list"
        elif [[ "$out" == *"permission denied"* ]]; then
            ok "the role cannot read $t (not on the list): permission denied"
        else
            fail "reading $t failed for another reason than a missing grant: $out"
        fi
    done

    s="\"${granted[0]%%.*}\".\"${granted[0]#*.}\""
    if out=$(as_role "INSERT INTO $s VALUES (1)"); then
        fail "the role inserted into ${granted[0]}"
    elif [[ "$out" == *"read-only transaction"* ]]; then
        ok "INSERT into ${granted[0]} fails: cannot execute INSERT in a read-only transaction"
    else
        fail "INSERT failed for another reason than the read-only session: $out"
    fi
    if out=$(as_role "SET default_transaction_read_only = off" "INSERT INTO $s VALUES (1)"); then
        fail "the role inserted into ${granted[0]} once its session was writable"
    elif [[ "$out" == *"permission denied"* ]]; then
        ok "INSERT fails in a writable session too: permission denied"
    else
        fail "INSERT in a writable session failed for another reason: $out"
    fi
    if out=$(as_role "SET default_transaction_read_only = off" "CREATE TABLE \"${granted[0]%%.*}\".x (i int)"); then
        fail "the role created a table in a writable session"
    elif [[ "$out" == *"permission denied"* ]]; then
        ok "CREATE TABLE fails in a writable session too: permission denied"
    else
        fail "CREATE TABLE in a writable session failed for another reason: $out"
    fi

    got=$(as_role "SELECT current_setting('default_transaction_read_only') || ' ' || current_setting('statement_timeout')")
    if [ "$got" = "on 1min" ]; then
        ok "its sessions start read only with statement_timeout 1min"
    else
        fail "its sessions start with default_transaction_read_only, statement_timeout = $got"
    fi

    got=$(admin "$db" "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolinherit,
                              rolreplication, rolbypassrls, rolconnlimit
                         FROM pg_roles WHERE rolname = '$role'")
    if [ "$got" = "t|f|f|f|f|f|f|8" ]; then
        ok "attributes: LOGIN, NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS, CONNECTION LIMIT 8"
    else
        fail "attributes (login, super, createdb, createrole, inherit, replication, bypassrls, connlimit): $got"
    fi

    local schema_list
    schema_list=$(printf '%s\n' "${granted[@]%%.*}" | sort -u)
    got=$(while read -r s; do
        admin "$db" "SELECT has_schema_privilege('$role', '$s', 'CREATE')"
    done <<<"$schema_list" | sort -u)
    if [ "$got" = "f" ]; then
        ok "no CREATE on the schemas: $(echo "$schema_list" | paste -sd, -)"
    else
        fail "CREATE on a schema: $got"
    fi

    if out=$("${run_script[@]}" 2>&1); then
        fail "a second run over an existing role succeeded"
    elif [[ "$out" == *"exists already"* && "$out" == *"alter=1"* ]]; then
        ok "a second run stops: role exists already (hint: drop it, or -v alter=1)"
    else
        fail "a second run failed without saying the role exists: $out"
    fi

    s="\"${others[0]%%.*}\".\"${others[0]#*.}\""
    admin "$db" "GRANT SELECT ON $s TO \"$role\""
    if out=$("${run_script[@]}" -v alter=1 2>&1); then
        if as_role "SELECT count(*) FROM $s" >/dev/null; then
            fail "-v alter=1 left the stray grant on ${others[0]}"
        elif as_role "SELECT count(*) FROM \"${granted[0]%%.*}\".\"${granted[0]#*.}\"" >/dev/null; then
            ok "-v alter=1 resets the existing role: the stray grant on ${others[0]} is gone, the list readable"
        else
            fail "after -v alter=1 the role cannot read ${granted[0]}"
        fi
    else
        fail "-v alter=1 failed: $out"
    fi

    # A failed run leaves nothing: another role name, so that the one above
    # does not hide a role left behind.
    local role2="$role missing"
    roles+=("$role2")
    if out=$(psql -X -d "$(url_for "$db")" -v "role=$role2" -f "$script" 2>&1); then
        fail "the script ran with psql variables missing"
    elif role_exists "$role2"; then
        fail "with psql variables missing the script stopped but created the role"
    elif [[ "$out" == *"psql variables are missing"* ]]; then
        ok "with psql variables missing it exits non-zero, names them, creates nothing"
    else
        fail "with psql variables missing it failed otherwise: $out"
    fi

    local db2="${db}_missing" incomplete=()
    for t in "${granted[@]}"; do
        [ "$t" = "$missing" ] || incomplete+=("$t")
    done
    make_db "$db2" "${incomplete[@]}"
    local ran=(psql -X -v ON_ERROR_STOP=1 -d "$(url_for "$db2")" -v "db=$db2" "${vars[@]}"
        -v "role=$role2" -v "pw=$pw" -f "$script")
    set +e
    out=$("${ran[@]}" 2>&1)
    status=$?
    set -e
    if [ "$status" = 0 ]; then
        fail "the script succeeded on a database without $missing"
    elif role_exists "$role2"; then
        fail "the script failed on a database without $missing (exit $status) but left role \"$role2\" behind"
    elif [[ "$out" == *"relation \"$missing\" does not exist"* ]]; then
        ok "without $missing: exit $status at that grant, and no role left behind ($(grep -m1 -o 'ERROR: .*' <<<"$out"))"
    else
        fail "without $missing it failed (exit $status) for another reason: $out"
    fi
}

# The arrays below reach check() by name (local -n), which shellcheck
# does not follow.
# shellcheck disable=SC2034
{
    omop_vars=(-v "cdm_schema=cdm" -v "vocab_schema=Vocab 5" -v "consent_schema=plexus consent")
    omop_granted=(
        cdm.person cdm.observation_period cdm.condition_occurrence cdm.drug_exposure
        cdm.measurement cdm.observation cdm.death
        "Vocab 5.concept" "Vocab 5.concept_ancestor"
        "plexus consent.consent" "plexus consent.opt_out"
    )
    omop_others=(cdm.note "Vocab 5.concept_relationship" cdm.visit_occurrence)
    check deploy/omop/readonly-role.sql omop omop_vars omop_granted omop_others cdm.death

    pg_vars=(-v "schema=Warehouse")
    pg_granted=(
        Warehouse.person Warehouse.measurement Warehouse.condition_occurrence
        Warehouse.observation Warehouse.visit_occurrence Warehouse.drug_exposure
        Warehouse.observation_period Warehouse.death Warehouse.consent Warehouse.opt_out
    )
    pg_others=(Warehouse.note)
    check deploy/postgres/readonly-role.sql postgres pg_vars pg_granted pg_others Warehouse.death
}

if [ "$failures" -ne 0 ]; then
    echo "$failures role checks failed"
    exit 1
fi
echo "role checks passed"
