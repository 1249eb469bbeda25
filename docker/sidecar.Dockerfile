# The inferwatch sidecar: a metrics proxy in front of a model server, in the same pod.
#   docker build -f docker/sidecar.Dockerfile -t inferwatch/sidecar:0.1.0 .
# Serves on 8080 (proxy, /health, /ready) and 9464 (admin: /metrics, /ready, /wait-for-drain).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml setup.py build_backend.py MANIFEST.in README.md ./
COPY inferwatch ./inferwatch
# A regular (not editable) install, so the source tree can go; `fast` brings uvloop. The
# proxy's hot path is compiled with mypyc (setup.py), so a C compiler is there for the
# install and removed in the same layer.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && INFERWATCH_COMPILE=1 pip install ".[fast]" \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* /src

# A numeric user, so Kubernetes' runAsNonRoot can verify it.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin inferwatch
USER 10001:10001
WORKDIR /

# The model server in the same pod; override with --upstream or this variable.
ENV INFERWATCH_SIDECAR_UPSTREAM=http://127.0.0.1:8000
EXPOSE 8080 9464
ENTRYPOINT ["inferwatch"]
CMD ["sidecar"]
