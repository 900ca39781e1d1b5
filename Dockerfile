# syntax=docker/dockerfile:1.7
# localtts for CUDA hosts: the LiveKit voice-agent worker (default) or the synthesis service.
#
#   docker build -t localtts .
#   docker run --gpus all --env-file .env \
#       -v localtts-hf:/home/localtts/.cache/huggingface \
#       -v localtts-compile:/home/localtts/.cache/compile \
#       -v localtts-data:/home/localtts/.local/share/localtts  localtts            # worker
#   docker run --gpus all --env-file .env -p 8000:8000 \
#       -e HEALTHCHECK_URL=http://127.0.0.1:8000/health ...  localtts serve --host 0.0.0.0 --port 8000
#
# Weights are never baked in: mount a Hugging Face cache that holds them (or set
# LOCALTTS_ALLOW_DOWNLOAD=1 once). See docs/agent.md.

# torch wheels bring their own CUDA runtime: the image only needs the driver the NVIDIA
# container toolkit mounts, so the small "base" flavour is enough
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu22.04
FROM ${CUDA_IMAGE}

# CUDA 12.8 torch wheels (any driver >= 570); change together with CUDA_IMAGE
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# python 3.11 (the version the project is tested with); gcc and the Python headers
# because triton builds a small launcher module the first time torch.compile runs
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev gcc curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 --shell /bin/sh localtts
WORKDIR /app
RUN chown localtts:localtts /app
USER localtts

# caches that must outlive the container: weights, compiled kernels, the embedded
# PostgreSQL / voice data. Created here so named volumes inherit the user's ownership.
ENV HOME=/home/localtts \
    HF_HOME=/home/localtts/.cache/huggingface \
    TORCHINDUCTOR_CACHE_DIR=/home/localtts/.cache/compile/inductor \
    TRITON_CACHE_DIR=/home/localtts/.cache/compile/triton \
    LOCALTTS_DATA_DIR=/home/localtts/.local/share/localtts \
    PATH=/app/.venv/bin:$PATH
RUN mkdir -p "$HF_HOME" /home/localtts/.cache/compile "$LOCALTTS_DATA_DIR"

# every package at the lock's version; torch from the CUDA 12.8 index
# (LOCALTTS_TORCH_INDEX_URL, see agent/install.sh)
COPY --chown=localtts:localtts . .
RUN LOCALTTS_TORCH_INDEX_URL="$TORCH_INDEX_URL" LOCALTTS_ENGINES="piper chatterbox" \
    PYTHON=python3.11 bash agent/install.sh

VOLUME ["/home/localtts/.cache/huggingface", "/home/localtts/.cache/compile", "/home/localtts/.local/share/localtts"]

COPY --chmod=755 <<'EOF' /app/.venv/bin/localtts-entrypoint
#!/bin/sh
# worker [ARGS]  -> the LiveKit worker (python -m localtts_agent start ARGS)
# serve [ARGS]   -> the synthesis service (localtts serve ARGS)
# anything else  -> run as given (localtts doctor, bash, ...)
set -e
case "${1:-worker}" in
    worker) [ $# -gt 0 ] && shift; exec python -m localtts_agent start "$@" ;;
    serve) exec localtts "$@" ;;
    *) exec "$@" ;;
esac
EOF

# the worker's health endpoint (livekit-agents, port 8081 in `start` mode); the service's
# is /health on its own port: set HEALTHCHECK_URL when running `serve`
ENV HEALTHCHECK_URL=http://127.0.0.1:8081/
EXPOSE 8081 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD curl -fsS "$HEALTHCHECK_URL" >/dev/null || exit 1

ENTRYPOINT ["localtts-entrypoint"]
CMD ["worker"]
