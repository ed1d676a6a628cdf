# gpu-carbon-exporter: per-node GPU energy and carbon exporter.
#
# Base: Debian bookworm "slim" with Debian's own python3 (3.11) and the daemon
# in a virtual environment. Why not python:3.x-slim: that image carries a
# Python compiled by its maintainers, which nobody can rebuild from Debian
# packages. Everything here comes from Debian's archive (signed, mirrored,
# archived on snapshot.debian.org) plus PyPI files pinned by SHA-256 in
# deploy/requirements.lock, so CI builds and runs exactly the image users pull:
# scripts/test-image makes the same bookworm base with debootstrap (the tool
# Debian's official image is made with) where no registry is reachable, and
# passes it as BASE_IMAGE; the label base.name follows BASE_IMAGE.
#
# Two stages: the first installs the locked dependencies and the wheel into
# /opt/gpu-carbon-exporter (a venv); the second is the base plus Debian's
# python3 and that venv, so no pip, build tool, lock file or cache ships.
#
# Size, measured: 185 MB = the bookworm base 77 MB + Debian's python3 and
# ca-certificates ~45 MB + the venv 62 MB (grpcio's library the largest part,
# then aiohttp and helpers, lightkube and its models). No CUDA and no libnvidia-ml: the NVIDIA container runtime
# mounts the host's driver library (see NVIDIA_DRIVER_CAPABILITIES below).
# `bash scripts/test-image` prints the measured size and build time.
#
# Build: docker build . | buildah build --format docker .  (docker format keeps
# HEALTHCHECK). Behind a TLS-intercepting proxy, pass its CA bundle as a secret:
#   --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt
# It is mounted for the pip step only and never stored in a layer.

ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# python3-setuptools/-wheel: the build backend from Debian, so the wheel build
# fetches nothing unpinned from PyPI (a throwaway venv that sees Debian's
# packages builds it with --no-build-isolation).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-setuptools python3-wheel \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy/requirements.lock ./deploy/
COPY daemon ./daemon
# The locked set first (every file checked against its hash, wheels only: no
# compiler runs), then the wheel alone with --no-deps, then `pip check` proves
# the lock satisfies the wheel's own ranges. Extras: kubernetes, auth.
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && python3 -m venv --system-site-packages /tmp/build-venv \
 && /tmp/build-venv/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python3 -m venv /opt/gpu-carbon-exporter \
 && /opt/gpu-carbon-exporter/bin/pip install --require-hashes --only-binary=:all: --no-deps \
      -r deploy/requirements.lock \
 && /opt/gpu-carbon-exporter/bin/pip install --no-deps /wheels/*.whl \
 && /opt/gpu-carbon-exporter/bin/pip check \
 && /opt/gpu-carbon-exporter/bin/pip uninstall -y -q pip

FROM ${BASE_IMAGE} AS runtime
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gpu-carbon-exporter" \
      org.opencontainers.image.description="Per-node daemon that measures GPU energy through NVML, attributes it to pods, workloads and teams, converts it to emissions and exports Prometheus metrics." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# python3 is the venv's interpreter; ca-certificates lets the live carbon
# intensity sources (HTTPS APIs) verify their servers.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/gpu-carbon-exporter \
 && chown 65534:65534 /var/lib/gpu-carbon-exporter
COPY --from=build /opt/gpu-carbon-exporter /opt/gpu-carbon-exporter

# The NVIDIA container runtime mounts the driver's libnvidia-ml (NVML) for the
# "utility" capability alone: no CUDA, no compute libraries enter the container.
ENV PATH=/opt/gpu-carbon-exporter/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility \
    HEALTHCHECK_URL=http://127.0.0.1:9789/healthz

# State (energy counters kept across restarts) lives in /var/lib/gpu-carbon-exporter;
# mount a volume there. The user is nobody:nogroup by number, so that Kubernetes'
# `runAsNonRoot` can verify it without reading /etc/passwd.
# The Helm chart switches to root only where the kubelet pod-resources socket
# requires it (podResources.enabled with securityContext.runAsRoot).
USER 65534:65534
EXPOSE 9789
# The image's own Python, nothing else (no curl or wget in the image). Set
# HEALTHCHECK_URL when --web.listen-address moves the port. Kubernetes ignores
# HEALTHCHECK; the chart uses its own probes on the same endpoints.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["gpu-carbon-exporter"]
