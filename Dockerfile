# syntax=docker/dockerfile:1
# glmtts-batch serve on a GPU: docker/README.md has build and run commands.
# Two stages: `build` makes every wheel the server needs; `runtime` installs only those
# wheels (no compiler, no test or training packages) on the CUDA runtime base.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# The CUDA build of torch; `--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu` for a CPU image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0

FROM ${CUDA_IMAGE} AS build
ARG TORCH_INDEX
ARG TORCH_VERSION
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build-venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY glmtts_batch ./glmtts_batch
# The project's own wheel first, then wheels for it, its `server` extra and torch, and
# upstream's text-normalisation graphs without the pynini they pin (README: text normalisation).
RUN /opt/build-venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/build-venv/bin/pip wheel --wheel-dir /wheels --extra-index-url "${TORCH_INDEX}" \
       "torch==${TORCH_VERSION}" "$(ls /wheels/glmtts_batch-*.whl)[server]" \
    && /opt/build-venv/bin/pip wheel --no-deps --wheel-dir /wheels "WeTextProcessing==1.0.3"

FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    GLMTTS_MODEL_DIR=/models
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --gid 10001 glmtts \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin glmtts \
    && mkdir -p /models /data \
    && chown 10001:10001 /data
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "glmtts-batch[server]==0.1.0" \
    && pip install --no-index --no-deps --find-links /wheels "WeTextProcessing==1.0.3" \
    && pip uninstall -y pip
USER 10001:10001
WORKDIR /data
# The checkpoint is mounted read-only at /models; jobs, queue and voices live in /data.
VOLUME ["/models", "/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["glmtts-batch"]
# 0.0.0.0 needs a token: mount it at /run/secrets/glmtts_token (docker/README.md).
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--jobs-dir", "/data", "--token-file", "/run/secrets/glmtts_token"]
