# fhir_bridge container image: the wheel in a slim Python, run as a non-root user.
#
#   docker build -t fhir-bridge .
#   docker run -p 8080:8080 -v $PWD/site/config:/srv/fhir-bridge/config:ro \
#       -v fhir-bridge-data:/var/lib/fhir-bridge fhir-bridge
#
# The image holds a starter installation (`fhir-bridge init`) in /srv/fhir-bridge; mount your
# own config/ (and mappings/, profiles/ if you change them) over it. The SQLite store lives in
# the /var/lib/fhir-bridge volume; with `storage.engine: redis` nothing needs to persist here.
# See docs/operations.md.

FROM python:3.11-slim AS build
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
COPY config ./config
COPY mappings ./mappings
COPY profiles ./profiles
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/fhir-bridge/bin:$PATH \
    FHIR_BRIDGE_CONFIG=/srv/fhir-bridge/config/bridge.yaml \
    FHIR_BRIDGE_API__HOST=0.0.0.0 \
    FHIR_BRIDGE_API__PORT=8080 \
    FHIR_BRIDGE_STORAGE__PATH=/var/lib/fhir-bridge/fhir-bridge.db
COPY --from=build /wheels /tmp/wheels
RUN python -m venv /opt/fhir-bridge \
    && /opt/fhir-bridge/bin/pip install /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --user-group --no-create-home \
       --home-dir /srv/fhir-bridge --shell /usr/sbin/nologin fhirbridge \
    && fhir-bridge init /srv/fhir-bridge \
    && mkdir -p /var/lib/fhir-bridge \
    && chown fhirbridge:fhirbridge /var/lib/fhir-bridge
USER fhirbridge
WORKDIR /srv/fhir-bridge
VOLUME ["/var/lib/fhir-bridge"]
EXPOSE 8080
# Liveness only (/healthz has no dependencies); /readyz is for a load balancer or orchestrator.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FHIR_BRIDGE_API__PORT', '8080'), timeout=4)"]
# SIGTERM stops the bridge cleanly (the store is closed); exec form, so it reaches the process.
CMD ["fhir-bridge", "run"]
