# One image for the web app and the worker (the command picks the role).
# The worker's GPU comes from the host through the compose device reservation; the
# image holds CPU torch by default: build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# for a CUDA build.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SUBNETSCOPE_DATA_DIR=/data \
    SUBNETSCOPE_LOCAL_ROOT=/data/checkpoints \
    HF_HOME=/cache/huggingface

WORKDIR /app

# Dependencies first, so code edits do not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p app worker frontend && touch app/__init__.py worker/__init__.py frontend/__init__.py \
 && pip install --index-url "$TORCH_INDEX" torch \
 && pip install . \
 && pip uninstall -y subnetscope

COPY app ./app
COPY worker ./worker
COPY frontend ./frontend
RUN pip install --no-deps . \
 && useradd --create-home --uid 1000 subnetscope \
 && mkdir -p /data /cache/huggingface && chown -R subnetscope /data /cache

USER subnetscope
EXPOSE 8000
VOLUME ["/data", "/cache/huggingface"]

# web: `subnetscope serve --host 0.0.0.0`; worker: `subnetscope worker` (see docker-compose.yml)
CMD ["subnetscope", "serve", "--host", "0.0.0.0", "--port", "8000"]
