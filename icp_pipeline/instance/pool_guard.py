"""The pool-slot guard as a PostgreSQL trigger, for instances whose event log is dagster-postgres's own.

The official Dagster Helm chart writes `event_log_storage: dagster_postgres.event_log.PostgresEventLogStorage`
into the instance config itself, and its webserver and daemon images cannot import this project's
GuardedPostgresEventLogStorage. The same guarantee (a claimed slot cannot be claimed again) is kept
in the database instead: a BEFORE UPDATE trigger on `concurrency_slots` turns a claim of a slot that
another step already holds into a no-op. The racing claimant's UPDATE then reports 0 rows, and
Dagster 1.13's `SqlEventLogStorage._claim_concurrency_slot` returns BLOCKED on a 0 rowcount, so the
step waits and retries like any blocked step. Freeing a slot (step_key set to NULL) and marking it
deleted (claim unchanged) pass through.

Install it once the event-log tables exist: `python -m icp_pipeline.instance.pool_guard` loads
the instance from $DAGSTER_HOME (creating Dagster's tables if needed) and installs or refreshes the
trigger; it is idempotent. The Helm values run it as an init container of the code server
(deploy/helm/values.yaml).
"""

import sys

import sqlalchemy as sa

TRIGGER = "icp_keep_claimed_slot"

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A new claim on a slot another step holds: skip the row, so the claimant's UPDATE counts 0.
    IF OLD.step_key IS NOT NULL AND NEW.step_key IS NOT NULL
       AND (NEW.run_id, NEW.step_key) IS DISTINCT FROM (OLD.run_id, OLD.step_key) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$
"""

# CREATE TRIGGER has no IF NOT EXISTS before PostgreSQL 14; creating it only when missing keeps a
# re-run from dropping it (no window without the guard while run workers claim).
_TRIGGER = f"""
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgname = '{TRIGGER}' AND tgrelid = 'concurrency_slots'::regclass
    ) THEN
        CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON concurrency_slots
            FOR EACH ROW EXECUTE FUNCTION {TRIGGER}();
    END IF;
END
$$
"""


def install_pool_guard(connection: sa.engine.Connection) -> None:
    """Installs (or refreshes) the trigger on Dagster's `concurrency_slots` table; idempotent.
    Each statement is atomic on its own, so an autocommit connection is fine."""
    connection.execute(sa.text(_FUNCTION))
    connection.execute(sa.text(_TRIGGER))


def pool_guard_installed(connection: sa.engine.Connection) -> bool:
    """Whether the trigger is on `concurrency_slots` and enabled."""
    return bool(
        connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_trigger WHERE tgname = :name"
                " AND tgrelid = 'concurrency_slots'::regclass AND tgenabled <> 'D'"
            ),
            {"name": TRIGGER},
        ).scalar()
    )


def install_for_instance() -> str:
    """Installs the guard in the event-log database of the instance at $DAGSTER_HOME; returns the
    storage class it found (the guard is PostgreSQL-only)."""
    from dagster import DagsterInstance
    from dagster_postgres.event_log import PostgresEventLogStorage

    instance = DagsterInstance.get()
    storage = instance.event_log_storage  # creates Dagster's tables on a new database
    if not isinstance(storage, PostgresEventLogStorage):
        raise SystemExit(f"pool guard: the event log is {type(storage).__name__}, not PostgreSQL")
    try:
        # The storage's own connection (autocommit), so its auth settings apply.
        with storage.index_connection() as connection:
            install_pool_guard(connection)
            if not pool_guard_installed(connection):
                raise SystemExit("pool guard: the trigger is missing after installing it")
    finally:
        instance.dispose()
    return type(storage).__name__


def main() -> None:
    storage = install_for_instance()
    # No URL or host in the message: it would carry the database credentials.
    print(f"pool guard installed on concurrency_slots ({storage})", file=sys.stdout)


if __name__ == "__main__":
    main()
