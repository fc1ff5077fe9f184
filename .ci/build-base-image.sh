#!/bin/bash
# Make the base image of the controller's Linux image (manifests/images/controller.Dockerfile)
# from Debian packages alone, for machines that reach Debian's mirrors and PyPI but no image
# registry (CI here): `debootstrap --variant=minbase bookworm` plus Debian's python3 (3.11, what
# the project needs) and python3-venv, ca-certificates and netbase, packed as a root file system
# tarball that `docker import` turns into an image:
#
#     ${WINSPEC_BASE_CACHE:-/var/cache/winspec}/base-bookworm.tar
#     docker import /var/cache/winspec/base-bookworm.tar winspec-base:bookworm
#
# tests/integration/test_controller_image.py imports it into its private dockerd and builds the
# image with --build-arg BASE=winspec-base:bookworm. The tarball is cached outside the clone: a
# second run (or a fresh clone) reuses it when it was made with the same package list.
# debootstrap uses the Debian mirror apt on this machine uses. Needs root (debootstrap chroots).
set -euo pipefail

SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates,netbase
CACHE=${WINSPEC_BASE_CACHE:-/var/cache/winspec}
TARBALL=$CACHE/base-$SUITE.tar
START=$(date +%s)
say() { echo "build-base-image [+$(($(date +%s) - START))s]: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    # debootstrap creates device nodes, chroots and mounts /proc: root only.
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n env WINSPEC_BASE_CACHE="$CACHE" bash "$0" "$@"
    fi
    echo "build-base-image: needs root (or password-less sudo) for debootstrap" >&2
    exit 1
fi

mkdir -p "$CACHE"
# One build at a time per cache (two CI jobs on one machine share it).
exec 9>"$CACHE/.base-$SUITE.lock"
flock 9

# What the tarball was made from, stored beside it: a different list means a rebuild. Bump
# REVISION when the way the tree is made changes.
REVISION=2
STAMP="$SUITE $PACKAGES r$REVISION"
if [ -s "$TARBALL" ] && [ "$(cat "$TARBALL.stamp" 2>/dev/null)" = "$STAMP" ]; then
    say "reusing $TARBALL ($(du -h "$TARBALL" | cut -f1); $STAMP)"
    exit 0
fi

# The first binary ("deb") source apt uses for the suite, from one-line or deb822 entries.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        awk -v s="$SUITE" '$1 == "deb" { for (i = 2; i < NF; i++) if ($i !~ /^\[/ && $(i + 1) == s) { print $i; exit } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        # deb822: one stanza per paragraph; the first "deb" stanza listing the suite wins.
        awk -v s="$SUITE" '
            function flush() {
                if (!done && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " s " ") && uris != "") {
                    split(uris, u, " "); print u[1]; done = 1
                }
                types = suites = uris = ""
            }
            /^[ \t]*$/ { flush(); next }
            { gsub(/[ \t]+/, " ") }
            /^Types:/ { types = substr($0, 8) }
            /^Suites:/ { suites = substr($0, 9) }
            /^URIs:/ { uris = substr($0, 7) }
            END { flush() }' "$f"
    done
}
MIRROR=$(apt_mirror | grep -v -- '-security' | head -1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
say "mirror: $MIRROR"

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap (apt-get)"
    env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$KEYRING" ] || { say "no $KEYRING (apt-get install debian-archive-keyring)" >&2; exit 1; }

ROOTFS=$(mktemp -d "$CACHE/.rootfs-$SUITE.XXXXXX")
cleanup() {
    # debootstrap mounts /proc and /sys inside the tree; never delete through a mount point.
    local target
    findmnt -rno TARGET | grep -F "$ROOTFS/" | sort -r | while read -r target; do
        umount -l "$target" || true
    done || true
    rm -rf --one-file-system "$ROOTFS" "$TARBALL.partial"
}
trap cleanup EXIT

say "debootstrap --variant=minbase --include=$PACKAGES $SUITE"
debootstrap --variant=minbase --include="$PACKAGES" --keyring="$KEYRING" \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
    tail -n 30 "$ROOTFS.log" >&2
    rm -f "$ROOTFS.log"
    exit 1
}
rm -f "$ROOTFS.log"
# What only the installation needed: downloaded packages, package lists, logs.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* "$ROOTFS"/tmp/*
python=$(chroot "$ROOTFS" python3 --version)
say "$python in the tree ($(du -sh "$ROOTFS" | cut -f1))"
case "$python" in "Python 3.11."*) ;; *) say "expected Python 3.11, got $python" >&2; exit 1 ;; esac

# mktemp made the tree's top 0700: the image's / must be 0755 for the non-root user.
chmod 0755 "$ROOTFS"
tar --numeric-owner -C "$ROOTFS" -cf "$TARBALL.partial" .
mv -f "$TARBALL.partial" "$TARBALL"
echo "$STAMP" >"$TARBALL.stamp"
say "done: $TARBALL ($(du -h "$TARBALL" | cut -f1)); docker import $TARBALL winspec-base:$SUITE"
