# The inferwatch reference model server (PyTorch, dynamic batching), instrumented.
#   docker build -f docker/server.Dockerfile -t inferwatch/server:0.1.0 .
# PyPI's torch wheels carry CUDA and also run on CPU. For a smaller CPU-only image:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Serves inference and /metrics (gpu_* included on CUDA) on 8000.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi

WORKDIR /src
COPY pyproject.toml setup.py build_backend.py MANIFEST.in README.md ./
COPY inferwatch ./inferwatch
# A regular (not editable) install, so the source tree can go; `fast` brings uvloop. Pure
# Python: the compiled hot path is the sidecar's (its image compiles it).
RUN INFERWATCH_COMPILE=0 pip install ".[server,fast]" && rm -rf /src

# The NVIDIA runtime mounts the driver's CUDA and NVML libraries (utility: NVML, for gpu_*).
# Which GPUs are visible is left to the runtime (Kubernetes' device plugin, compose's
# reservation): never all of the node's.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

# A numeric user, so Kubernetes' runAsNonRoot can verify it; a home for PyTorch's caches.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin inferwatch
USER 10001:10001
WORKDIR /home/inferwatch

EXPOSE 8000
ENTRYPOINT ["inferwatch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
