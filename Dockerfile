# syntax=docker/dockerfile:1
# gpu-carbon-exporter: per-node GPU energy and carbon exporter.
#
# Two stages: the first builds the wheel (needs the source tree and pip's build
# backend); the second installs that wheel alone into a clean slim image, so no
# source, build tool or pip cache ends up in the runtime layer.
#
# Size: python:3.12-slim is about 125 MB unpacked; the runtime dependencies
# measure about 45 MB installed (grpcio ~19 MB, aiohttp and helpers ~12 MB,
# lightkube ~4 MB, the rest small). No CUDA and no libnvidia-ml: the NVIDIA
# container runtime mounts the host's driver library (see NVIDIA_DRIVER_CAPABILITIES
# below), so the image stays around 175 MB.

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY daemon ./daemon
# --no-deps: the runtime stage resolves dependencies from the index itself,
# pinned by the wheel's metadata.
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gpu-carbon-exporter" \
      org.opencontainers.image.description="Per-node daemon that measures GPU energy through NVML, attributes it to pods, workloads and teams, converts it to emissions and exports Prometheus metrics." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12-slim"

# The NVIDIA container runtime mounts the driver's libnvidia-ml (NVML) for the
# "utility" capability alone: no CUDA, no compute libraries enter the container.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility

# Bind-mount the wheel from the build stage instead of COPYing it, so the wheel
# file itself never becomes a layer of the runtime image.
# Extras: the Kubernetes sources (lightkube, grpcio) and basic auth (bcrypt).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install "$(echo /wheels/*.whl)[kubernetes,auth]" \
 && mkdir -p /var/lib/gpu-carbon-exporter \
 && chown 65534:65534 /var/lib/gpu-carbon-exporter

# State (energy counters kept across restarts) lives in /var/lib/gpu-carbon-exporter;
# mount a volume there. The user is nobody:nogroup by number, so that Kubernetes'
# `runAsNonRoot` can verify it without reading /etc/passwd.
# The Helm chart switches to root only where the kubelet pod-resources socket
# requires it (podResources.enabled with securityContext.runAsRoot).
USER 65534:65534
EXPOSE 9789
ENTRYPOINT ["gpu-carbon-exporter"]
