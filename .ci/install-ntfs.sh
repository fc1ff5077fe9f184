#!/bin/sh
# Install what the NTFS suite (tests/integration/test_ntfs_bundles.py) uses: Debian's ntfs-3g
# (the NTFS driver over FUSE, with mkntfs) and fuse3 (fusermount3). The suite also needs
# /dev/fuse and root, which no package provides.
# Idempotent: does nothing when both are present. Needs root or password-less sudo to install.
set -eu

present() {
    command -v ntfs-3g >/dev/null 2>&1 && { command -v mkntfs >/dev/null 2>&1 || [ -x /usr/sbin/mkntfs ] || [ -x /sbin/mkntfs ]; }
}

if present; then
    echo "install-ntfs: ntfs-3g and mkntfs are present"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo -n"
else
    echo "install-ntfs: need root (or sudo) to install ntfs-3g" >&2
    exit 1
fi

echo "install-ntfs: installing ntfs-3g (system-wide, apt-get)"
$as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ntfs-3g

if present; then
    echo "install-ntfs: installed"
    exit 0
fi
echo "install-ntfs: ntfs-3g installed but ntfs-3g or mkntfs is missing" >&2
exit 1
