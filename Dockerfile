# One image for every role: `docker run IMAGE serve|worker|migrate|dev`.
# The client (./client) and the server (.) are two distributions; the image holds
# both, with the embedded PostgreSQL/Redis for `dev`, at constraints.txt's versions.
FROM python:3.11-slim AS build
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt \
      './client[progress]' '.[embedded]'

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 collector
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'nex-collector[embedded]' \
    && rm -rf /wheels
# /data belongs to the collector user, so a named volume mounted there (compose
# initialises it from the image) is writable without running as root.
RUN mkdir -p /data && chown collector:collector /data
USER collector
WORKDIR /home/collector
# 0.0.0.0 is reachable from the network: `serve` and `dev` refuse to start
# without NEX_COLLECTOR_TOKENS unless NEX_COLLECTOR_ALLOW_ANONYMOUS=true.
ENV DATA_DIR=/data \
    NEX_COLLECTOR_ADDR=0.0.0.0:50051 \
    METRICS_ADDR=0.0.0.0:9464
EXPOSE 50051 9464
ENTRYPOINT ["nex-collector"]
CMD ["serve"]
