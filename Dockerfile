# One image for the code server, the webserver and the daemon; pick the role with the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/home

RUN useradd --create-home --uid 10001 icp \
    && mkdir -p /opt/dagster/home /opt/icp \
    && chown -R icp:icp /opt/dagster/home

WORKDIR /opt/icp
# Pinned dependencies first (their own layer, rebuilt only when the lock changes), then the project
# itself without resolving anything again.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md ./
COPY icp_pipeline ./icp_pipeline
RUN pip install --no-cache-dir --no-deps . && pip check
COPY dagster.yaml workspace.yaml /opt/dagster/home/

USER 10001
EXPOSE 3000 4000
# Roles: `dagster-webserver -h 0.0.0.0 -p 3000 -w /opt/dagster/home/workspace.yaml`,
#        `dagster-daemon run -w /opt/dagster/home/workspace.yaml`,
#        `dagster code-server start -h 0.0.0.0 -p 4000 -m icp_pipeline.definitions`.
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/opt/dagster/home/workspace.yaml"]
