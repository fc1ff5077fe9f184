# The cluster controller's Linux image: `winspec run --source kubernetes` (central shape,
# manifests/overlays/central). Build from the repository root:
#   docker build -f manifests/images/controller.Dockerfile -t winspec-controller:0.2.0 .
# The Windows image (node agent, node-local shape, Docker mode) is manifests/swarm/Dockerfile.
#
# Without an image registry or network (CI): a base made from Debian packages
# (.ci/build-base-image.sh, then `docker import`) and the wheels built on the host
# (`pip wheel --wheel-dir build/wheels . 'setuptools>=77'`), see the README's "Images":
#   docker build --network=none --build-arg BASE=winspec-base:bookworm \
#     --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/build/wheels \
#     -f manifests/images/controller.Dockerfile -t winspec-controller:0.2.0 .
ARG BASE=python:3.11-slim
FROM ${BASE}

# pip reads these from the environment (build args are environment variables of RUN): by default
# PyPI; PIP_NO_INDEX=1 with PIP_FIND_LINKS=/src/build/wheels installs from the copied wheels only.
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=

# A fixed numeric user, so Kubernetes' runAsNonRoot can check it (the Deployment runs as 10001).
RUN groupadd --system --gid 10001 winspec \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin winspec \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/winspec /var/lib/winspec/bundles

# .dockerignore lets only pyproject.toml, README.md, controller/, adapters/ and build/wheels/ (when
# present) into the context.
COPY . /src
# A virtual environment, so one Dockerfile serves both bases: python3 is python:3.11-slim's
# /usr/local/bin/python3 or Debian's /usr/bin/python3 (whose system site-packages pip may not
# touch). PATH in full: an imported base image has no environment to extend.
ENV PATH=/opt/winspec/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
# No compiler in the image: every dependency has a manylinux wheel. The source tree goes once
# the package is installed; `winspec --help` proves the entry point loads.
RUN python3 -m venv /opt/winspec \
    && pip install --no-cache-dir --disable-pip-version-check /src \
    && rm -rf /src \
    && winspec --help >/dev/null

WORKDIR /
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["winspec"]
CMD ["run", "--source=kubernetes"]
