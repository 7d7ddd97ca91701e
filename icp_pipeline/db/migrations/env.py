"""Alembic environment: the URL comes from the caller (`icp-pipeline db upgrade`) or ICP_DATABASE_URL."""

from alembic import context

from icp_pipeline.db.models import Base
from icp_pipeline.db.session import get_engine
from icp_pipeline.settings import database_url

url = context.config.attributes.get("database_url") or database_url()

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with get_engine(url).connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        orphans_before: set = set()
        if sqlite:
            # SQLite alters a table by rebuilding it (batch mode: copy, DROP, rename). With foreign keys
            # on (as every app connection has them) DROP TABLE first deletes the rows and fires ON
            # DELETE CASCADE, which would wipe the runs' mentions, citations, claims and metrics. Off
            # for the migration (SQLite's documented procedure; the PRAGMA only works outside a
            # transaction, which pysqlite has not begun yet), then checked before the commit. Rows
            # that already lacked a parent (written with foreign keys off) are not the migration's.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            orphans_before = set(connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall())
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=sqlite)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = (
                    set(connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()) - orphans_before
                )
                if broken:
                    raise RuntimeError(
                        f"the migration left {len(broken)} rows with a missing parent: {sorted(broken)[:5]}"
                    )
        connection.commit()
