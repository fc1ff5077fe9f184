#!/bin/bash
# Install the real Kubernetes the cluster-mode tests run against, v1.20.2 compiled once from
# Debian bookworm's "kubernetes" source package (Debian's archive only: no Go module proxy, no
# GitHub), plus Debian's etcd and openssl:
#  - kube-apiserver and kube-controller-manager (tests/kube.py);
#  - for the one-node cluster (tests/node.py): kube-scheduler, kubelet and kube-proxy, the pod
#    sandbox's `pause` (Kubernetes' own build/pause/linux/pause.c, compiled statically) and
#    winspec-cri (.ci/cri/main.go, a small CRI client: Debian has no crictl), with Debian's
#    containerd, runc, CNI plugins, conntrack and iptables.
#
# The binaries go to a cache directory outside the clone, so a fresh clone (or `git clean`) does
# not pay the build again (about 5 minutes for the first two, 3 more for the node's):
#     ${WINSPEC_KUBE_CACHE:-/var/cache/winspec/kube-v1.20.2}/bin/
# tests/kube.py and tests/node.py look there (or at $WINSPEC_KUBE_BIN). With --bench (or
# WINSPEC_BUILD_BENCH=1) it also builds winspec-informer (.ci/informer/main.go, the client-go
# controller tests/benchmarks/bench_kubernetes.py compares winspec with; a few minutes more, not
# needed by the tests). Idempotent: only what is
# missing (or, for winspec-cri, changed) is built; otherwise it only makes sure the Debian
# packages are installed. Needs root or sudo -n for apt.
#
# Why the build is not a plain `go build`:
#  - Kubernetes 1.20 builds in GOPATH mode (GO111MODULE=off), as its own hack/ scripts do;
#    module mode with -mod=vendor stops at "updates to go.mod needed".
#  - pkg/generated/openapi/zz_generated.openapi.go is generated (`make gen_openapi`, which needs
#    rsync) and is not in the source tarball.
#  - The vendored github.com/modern-go/reflect2 v1.0.1 makes the server crash (SIGSEGV in
#    mapiterinit on the first custom object) when compiled with Go >= 1.18, and bookworm has Go
#    1.19; it and github.com/json-iterator/go are swapped for Debian's packaged 1.0.2 / 1.1.12.
set -euo pipefail

VERSION=v1.20.2
CACHE=${WINSPEC_KUBE_CACHE:-/var/cache/winspec/kube-$VERSION}
BIN=$CACHE/bin
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
HERE=$(cd "$(dirname "$0")" && pwd)
CRI_SOURCE=$HERE/cri/main.go
INFORMER_SOURCE=$HERE/informer/main.go
BENCH=${WINSPEC_BUILD_BENCH:-0}
[ "${1:-}" = --bench ] && BENCH=1
START=$(date +%s)
say() { echo "install-kube-apiserver [+$(($(date +%s) - START))s]: $*"; }

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
else
    as_root=(false)
fi
apt_install() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# What is not in $BIN yet (or is stale): Kubernetes components not reporting $VERSION, pause,
# and winspec-cri when .ci/cri/main.go changed since it was built (with --bench, the same for
# winspec-informer).
fresh() { # NAME SOURCE
    [ -x "$BIN/$1" ] && [ "$(cat "$BIN/$1.sha256" 2>/dev/null)" = "$(sha256sum <"$2")" ]
}
missing() {
    local c
    for c in "${COMPONENTS[@]}"; do
        "$BIN/$c" --version 2>/dev/null | grep -q "$VERSION" || echo "$c"
    done
    [ -x "$BIN/pause" ] || echo pause
    fresh winspec-cri "$CRI_SOURCE" || echo winspec-cri
    [ "$BENCH" != 1 ] || fresh winspec-informer "$INFORMER_SOURCE" || echo winspec-informer
}

# Debian packages the tests run: etcd and openssl (API server); the node's container runtime,
# CNI plugins, conntrack and iptables (kube-proxy).
RUNTIME_PACKAGES=(etcd-server openssl containerd runc containernetworking-plugins conntrack iptables)
runtime_deps() {
    local p absent=()
    for p in "${RUNTIME_PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || absent+=("$p")
    done
    if [ "${#absent[@]}" -eq 0 ]; then
        say "present: ${RUNTIME_PACKAGES[*]}"
        return
    fi
    say "installing ${absent[*]}"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_install "${absent[@]}"
}

if ! mkdir -p "$CACHE" 2>/dev/null || [ ! -w "$CACHE" ]; then
    # /var/cache needs root: create the cache once, owned by whoever runs CI.
    "${as_root[@]}" mkdir -p "$CACHE"
    "${as_root[@]}" chown "$(id -u):$(id -g)" "$CACHE"
fi
# One build at a time per cache directory (two CI jobs on one machine share the cache).
exec 9>"$CACHE/.lock"
flock 9

TODO=$(missing | tr '\n' ' ')
if [ -z "$TODO" ]; then
    say "reusing $BIN ($("$BIN/kube-apiserver" --version))"
    runtime_deps
    exit 0
fi

say "building $TODO($VERSION) into $BIN (about 5 minutes on 2 cores for the API server, 3 for the node)"
if ! grep -rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # Source entries mirroring the machine's own binary entries (deb822 files only).
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        case "$f" in *-src.sources) continue ;; esac
        grep -q '^Types: deb$' "$f" || continue
        say "adding deb-src entries from $f"
        sed 's/^Types: deb$/Types: deb-src/' "$f" | "${as_root[@]}" tee "${f%.sources}-src.sources" >/dev/null
    done
fi
say "apt-get update"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
say "installing build and run-time dependencies"
apt_install golang-go dpkg-dev rsync jq ca-certificates gcc libc6-dev "${RUNTIME_PACKAGES[@]}"

WORK=$CACHE/work
mkdir -p "$WORK" "$BIN"
cd "$WORK"
SRC=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
if [ -z "$SRC" ]; then
    say "apt-get source kubernetes"
    apt-get source -qq kubernetes 2>&1 | grep -v 'Download is performed unsandboxed' || true
    SRC=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
fi
[ -n "$SRC" ] || { say "apt-get source kubernetes produced no source tree" >&2; exit 1; }
say "source tree: $SRC"

if ! grep -q 'modern-go/reflect2 v1.0.2' "$SRC/vendor/modules.txt"; then
    say "replacing vendored reflect2 / json-iterator with Debian's packaged versions"
    PKG=$WORK/pkgs
    rm -rf "$PKG" && mkdir -p "$PKG/root"
    (cd "$PKG" && apt-get download -qq golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev 2>&1 \
        | grep -v 'Download is performed unsandboxed' || true)
    for deb in "$PKG"/*.deb; do dpkg-deb -x "$deb" "$PKG/root"; done
    for mod in modern-go/reflect2 json-iterator/go; do
        vendored=$SRC/vendor/github.com/$mod
        # Keep the vendored LICENSE file and drop tests/extras the build never compiles.
        rsync -a --delete --exclude '*_test.go' --exclude '*_tests/' --exclude 'extra/' \
            --exclude go.sum --exclude LICENSE --exclude BUILD \
            "$PKG/root/usr/share/gocode/src/github.com/$mod/" "$vendored/"
    done
    sed -i -e 's#\(github.com/json-iterator/go\) v1.1.10#\1 v1.1.12#g' \
        -e 's#\(github.com/modern-go/reflect2\) v1.0.1#\1 v1.0.2#g' "$SRC/vendor/modules.txt"
    rm -rf "$PKG"
fi

export GOPROXY=off GOFLAGS= GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE=$WORK/gocache
# Only the Kubernetes components need the generated OpenAPI code.
needs_openapi=0
for c in "${COMPONENTS[@]}"; do
    case " $TODO" in *" $c "*) needs_openapi=1 ;; esac
done
if [ "$needs_openapi" = 1 ] && [ ! -s "$SRC/pkg/generated/openapi/zz_generated.openapi.go" ]; then
    say "make gen_openapi"
    rm -rf "$SRC/_output"
    (cd "$SRC" && make gen_openapi >/dev/null)
fi

GOPATH_DIR=$WORK/gopath
mkdir -p "$GOPATH_DIR/src/k8s.io"
[ -L "$GOPATH_DIR/src/k8s.io/kubernetes" ] || ln -s "$SRC" "$GOPATH_DIR/src/k8s.io/kubernetes"
cd "$GOPATH_DIR/src/k8s.io/kubernetes"
export GOPATH=$GOPATH_DIR GO111MODULE=off
# The version a release build stamps in (what `--version` and /version report).
LDFLAGS="-s -w"
for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
    LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done
for c in $TODO; do
    case "$c" in
    pause)
        # The sandbox image's only program (build/pause/Makefile's flags); static: the image
        # has no libc.
        say "gcc build/pause/linux/pause.c"
        gcc -Os -Wall -Werror -static -DVERSION="$VERSION" -o "$BIN/.pause.partial" build/pause/linux/pause.c
        strip "$BIN/.pause.partial"
        ;;
    winspec-cri | winspec-informer)
        # GOPATH mode sees vendor/ only from inside k8s.io/kubernetes: build it from there.
        source=$CRI_SOURCE
        [ "$c" = winspec-cri ] || source=$INFORMER_SOURCE
        say "go build $c (.ci/${source#"$HERE/"})"
        mkdir -p "cmd/$c"
        cp "$source" "cmd/$c/main.go"
        go build -trimpath -ldflags "-s -w" -o "$BIN/.$c.partial" "./cmd/$c"
        sha256sum <"$source" >"$BIN/$c.sha256"
        ;;
    *)
        say "go build ./cmd/$c"
        go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/.$c.partial" "./cmd/$c"
        ;;
    esac
    mv -f "$BIN/.$c.partial" "$BIN/$c"
    say "built $BIN/$c ($(du -h "$BIN/$c" | cut -f1))"
done
[ -z "$(missing)" ] || { say "still missing or stale after the build: $(missing | tr '\n' ' ')" >&2; exit 1; }
if [ "${WINSPEC_KUBE_KEEP_WORK:-0}" != 1 ]; then
    say "removing the build tree and Go cache ($(du -sh "$WORK" | cut -f1))"
    rm -rf "$WORK"
fi
say "done: $("$BIN/kube-apiserver" --version)"
