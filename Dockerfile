# One image for every process shape: `trioscale serve` (the default), or `coord`, `derp`, `stun`,
# `dns` as the command. Runs as a non-root user and needs no writable root file system: state in
# the volume /var/lib/trioscale, temporary files in /tmp (a tmpfs or emptyDir).
#   make image     docker run --read-only --tmpfs /tmp -v trioscale:/var/lib/trioscale trioscale:0.1.0
# tests/deploy/test_dockerfile.py holds it to these rules.

# A pinned tag; builds that must not move can pin the digest here too (python:…@sha256:…).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY trioscale/ trioscale/
COPY services/ services/
COPY shared/ shared/
# the wheel, installed with its dependencies into a virtualenv the runtime stage copies as it is
# (same base image, so the same interpreter path): no compiler, pip cache or source there
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/trioscale \
 && /opt/trioscale/bin/pip install /wheels/trioscale-*.whl

FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/trioscale/bin:$PATH \
    TRIOSCALE_CONFIG=/etc/trioscale/config.yaml
RUN groupadd --system --gid 10001 trioscale \
 && useradd --system --uid 10001 --gid trioscale --home-dir /var/lib/trioscale --shell /usr/sbin/nologin trioscale \
 && install -d -o trioscale -g trioscale -m 0700 /var/lib/trioscale
COPY --from=build /opt/trioscale /opt/trioscale
COPY deploy/docker/config.yaml /etc/trioscale/config.yaml
# control, DERP, STUN, DNS, metrics/health/ready (deploy/docker/config.yaml)
EXPOSE 8080/tcp 8443/tcp 3478/udp 1053/udp 1053/tcp 9090/tcp
VOLUME ["/var/lib/trioscale"]
WORKDIR /var/lib/trioscale
# numeric, so a kubelet can check runAsNonRoot without reading /etc/passwd
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)"]
ENTRYPOINT ["trioscale"]
CMD ["serve"]
