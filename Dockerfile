# syntax=docker/dockerfile:1
# One image for the API and every stage; compose and Kubernetes pick the command.

# --- build: compile wheels (insightface 0.7.3 builds a C++ extension) into a virtual environment -------------
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY schemas ./schemas
COPY ingest_api ./ingest_api
COPY detector ./detector
COPY embedder ./embedder
COPY indexer ./indexer
COPY webhook_sender ./webhook_sender
COPY operations ./operations
# The Python client (its own distribution, httpx only): `fecapass enroll` sends the photos through it.
COPY clients/python ./clients/python
RUN pip install --no-cache-dir ./clients/python .
# The GPU image (compose.gpu.yaml, the Kubernetes gpu overlay): onnxruntime-gpu with pip's CUDA and cuDNN in
# place of the CPU onnxruntime. Both install the same module, so the CPU one goes first.
ARG ONNXRUNTIME_GPU=false
# hadolint ignore=DL3013
RUN if [ "$ONNXRUNTIME_GPU" = "true" ]; then \
        pip uninstall -y onnxruntime \
        && pip install --no-cache-dir ".[gpu]" \
        && python -c "import onnxruntime; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers()"; \
    fi

# --- runtime: no compilers, no sources beyond the installed package, not root -------------------------------
FROM python:3.11-slim-bookworm AS runtime
RUN useradd --create-home --uid 10001 fecapass \
    && mkdir -p /models \
    && chown fecapass:fecapass /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FECAPASS_MODEL_ROOT=/models \
    FECAPASS_API_HOST=0.0.0.0 \
    FECAPASS_METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/fecapass
EXPOSE 8000 9100
# The API checks its own /health/live; stage containers run `fecapass healthcheck --heartbeat` instead (the age
# of the file their loop rewrites each turn: a stuck loop fails it, while the metrics thread would still answer).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["fecapass", "healthcheck"]
CMD ["fecapass", "api"]
