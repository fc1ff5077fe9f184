#!/bin/sh
# Install a Docker engine for the integration tests, which start private dockerd instances
# (tests/dockerd.py). Idempotent: does nothing when dockerd is already installed (Debian's
# docker.io puts it in /usr/sbin, docker-ce in /usr/bin). Needs root or password-less sudo.
set -eu

for dockerd in /usr/bin/dockerd /usr/sbin/dockerd; do
    if [ -x "$dockerd" ]; then
        echo "install-docker: $dockerd is present: $("$dockerd" --version)"
        exit 0
    fi
done

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo -n"
else
    echo "install-docker: need root (or sudo) to install docker.io" >&2
    exit 1
fi

echo "install-docker: installing docker.io (system-wide, apt-get)"
$as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
# Without recommends: no needrestart prompts, no git/apparmor/etc. that the tests don't use.
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io

for dockerd in /usr/bin/dockerd /usr/sbin/dockerd; do
    if [ -x "$dockerd" ]; then
        echo "install-docker: installed $("$dockerd" --version)"
        exit 0
    fi
done
echo "install-docker: docker.io installed but no dockerd found" >&2
exit 1
