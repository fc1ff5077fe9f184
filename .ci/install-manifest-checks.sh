#!/bin/sh
# Install what the manifest tests use (tests/integration/test_manifests*.py,
# test_alert_rules.py): promtool, from Debian's `prometheus` package (the only Debian package
# that ships it: about 100 MB installed, of which promtool is 46 MB), whose server
# /usr/bin/prometheus the one-node cluster test runs on the host (tests/prometheus.py; it is
# never started as a service),
# and report whether kubectl with kustomize is there (`kubectl kustomize` builds the overlays;
# Debian's own kubernetes-client is 1.20 with a kustomize too old for these overlays, so kubectl
# comes from the Kubernetes or Google Cloud apt repositories and is not installed here).
# Without either, those tests skip; with CI=true they fail.
# Idempotent: does nothing when promtool and prometheus are present. Needs root or password-less sudo to install.
set -eu

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        as_root=""
    elif command -v sudo >/dev/null 2>&1; then
        as_root="sudo -n"
    else
        echo "install-manifest-checks: need root (or sudo) to install prometheus (promtool)" >&2
        exit 1
    fi
    echo "install-manifest-checks: installing prometheus for promtool (system-wide, apt-get)"
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        prometheus
fi
promtool --version | head -n 1
prometheus --version | head -n 1

if command -v kubectl >/dev/null 2>&1; then
    kubectl version --client 2>/dev/null | grep -i kustomize ||
        echo "install-manifest-checks: kubectl has no kustomize version line" >&2
else
    echo "install-manifest-checks: kubectl is not installed; the manifest build tests will" \
        "skip (fail with CI=true)" >&2
fi
