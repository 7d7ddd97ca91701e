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
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
