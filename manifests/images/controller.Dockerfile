# The cluster controller's Linux image: `winspec run --source kubernetes` (central shape,
# manifests/overlays/central). Build from the repository root:
#   docker build -f manifests/images/controller.Dockerfile -t winspec-controller:0.1.0 .
# The Windows image (node agent, node-local shape, Docker mode) is manifests/swarm/Dockerfile.
FROM python:3.11-slim

# A fixed numeric user, so Kubernetes' runAsNonRoot can check it (the Deployment runs as 10001).
RUN groupadd --system --gid 10001 winspec \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin winspec \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/winspec /var/lib/winspec/bundles

WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY adapters ./adapters
# No compiler in the image: every dependency has a manylinux wheel. The source tree goes once
# the package is installed; `winspec --help` proves the entry point loads.
RUN python -m pip install --no-cache-dir --disable-pip-version-check . \
    && cd / && rm -rf /src \
    && winspec --help >/dev/null

WORKDIR /
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["winspec"]
CMD ["run", "--source=kubernetes"]
