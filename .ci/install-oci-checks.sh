#!/bin/sh
# Install what the independent OCI checks of the tests use (tests/schema.py, tests/ocicheck):
# Debian's golang-github-opencontainers-specs-dev (the runtime-spec JSON Schema and the Go types
# specs-go, under /usr/share/gocode) and golang-go (to build tests/ocicheck offline).
# Idempotent: does nothing when both are present. Needs root or password-less sudo to install.
set -eu

spec_dir=/usr/share/gocode/src/github.com/opencontainers/runtime-spec
present() {
    [ -f "$spec_dir/schema/config-schema.json" ] && [ -f "$spec_dir/specs-go/config.go" ] &&
        { command -v go >/dev/null 2>&1 || [ -x /usr/lib/go/bin/go ]; }
}

if present; then
    echo "install-oci-checks: OCI schema, specs-go and go are present"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo -n"
else
    echo "install-oci-checks: need root (or sudo) to install golang-go and" \
        "golang-github-opencontainers-specs-dev" >&2
    exit 1
fi

echo "install-oci-checks: installing golang-go golang-github-opencontainers-specs-dev (system-wide, apt-get)"
$as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    golang-go golang-github-opencontainers-specs-dev

if present; then
    echo "install-oci-checks: installed"
    exit 0
fi
echo "install-oci-checks: packages installed but the schema, specs-go or go is missing" >&2
exit 1
