# One image for every runstream role (ingest, process, sink); compose.yaml runs it several times.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY runstream ./runstream
COPY ingest ./ingest
COPY processors ./processors
COPY storage ./storage
COPY dashboards ./dashboards
RUN pip install --no-cache-dir '.[server]' && useradd --system --uid 1000 runstream \
    && mkdir -p /certs /data && chown runstream /certs /data
# (named volumes mounted on /certs and /data start owned by runstream, so the tls init and the roles can write)
USER runstream
ENV RUNSTREAM_DATA_DIR=/data
ENTRYPOINT ["runstream"]
