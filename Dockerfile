# The pipeline-db image: `pipeline-db serve` by default, `pipeline-db worker` for
# a job runner (compose.yaml runs both). Configured through the environment:
# PIPELINE_DATABASE_URL, PIPELINE_LISTEN_URL, PIPELINE_PGBOUNCER, PIPELINE_API_TOKEN;
# config/pipeline.yaml (copied below) holds the rest.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --user-group pipeline

COPY pyproject.toml README.md /src/
COPY pipeline_db /src/pipeline_db
COPY server /src/server
COPY examples /src/examples
RUN pip install /src && rm -rf /src

WORKDIR /app

# The configuration file is read from the working directory; data/ holds the
# discover job's inbox and backups/ the backups, both the app user's.
COPY config ./config
RUN mkdir -p data/inbox backups && chown -R pipeline:pipeline data backups

USER pipeline
EXPOSE 8000
ENTRYPOINT ["pipeline-db"]
CMD ["serve", "--host", "0.0.0.0"]
