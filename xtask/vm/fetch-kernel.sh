#!/usr/bin/env bash
# Fetches the kernel package Debian's `linux-image-amd64` depends on (bookworm: a 6.1
# kernel with the project-quota support the host's kernel may lack) into a cache
# directory, without installing it and without touching the machine's apt configuration:
# `apt-get download` from the machine's own package lists into DEST/deb, then
# `dpkg-deb -x`. Idempotent: a finished DEST is left alone.
#
#   xtask/vm/fetch-kernel.sh DEST
#
# Afterwards DEST/x/boot holds vmlinuz-VER and config-VER, DEST/x/lib/modules/VER the
# modules (with a modules.dep made by depmod), and DEST/version the package name and
# version (`linux-image-VER VERSION`).
# Fails when the kernel lacks what `cargo xtask vm` needs: XFS and ext4 project quotas
# (CONFIG_XFS_QUOTA, CONFIG_QFMT_V2) and the 9p root share (CONFIG_9P_FS,
# CONFIG_NET_9P_VIRTIO).
set -euo pipefail

dest=${1:?usage: fetch-kernel.sh DEST}
if [ -s "$dest/version" ] && compgen -G "$dest/x/boot/vmlinuz-*" >/dev/null; then
    exit 0
fi
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}')
if [ -z "$pkg" ]; then
    echo "fetch-kernel.sh: apt knows no linux-image-amd64 (or it depends on no linux-image-*):" \
        "run \`apt-get update\` on a machine with Debian's main sources" >&2
    exit 1
fi
version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    echo "fetch-kernel.sh: apt offers no candidate for $pkg: run \`apt-get update\`" >&2
    exit 1
fi

echo "fetch-kernel.sh: downloading $pkg $version into $dest/deb" >&2
rm -rf "$dest/deb" "$dest/x"
mkdir -p "$dest/deb"
# As root apt downloads through the unprivileged _apt user, which cannot write into a
# directory root made: download as root (the package is checked against the signed lists).
(cd "$dest/deb" && apt-get -qq -o APT::Sandbox::User=root download "$pkg=$version")
dpkg-deb -x "$dest"/deb/"$pkg"_*.deb "$dest/x"

kver=${pkg#linux-image-}
config=$dest/x/boot/config-$kver
if [ ! -f "$dest/x/boot/vmlinuz-$kver" ] || [ ! -f "$config" ]; then
    echo "fetch-kernel.sh: $pkg $version has no boot/vmlinuz-$kver or boot/config-$kver" >&2
    exit 1
fi
# The package ships no modules.dep (its postinst runs depmod): make it, for
# `modprobe -d DEST/x -S VER --show-depends`, which resolves what the initramfs loads.
if [ ! -d "$dest/x/lib/modules/$kver" ]; then
    echo "fetch-kernel.sh: $pkg $version has no lib/modules/$kver" >&2
    exit 1
fi
command -v depmod >/dev/null || { echo "fetch-kernel.sh: depmod is missing: apt-get install kmod" >&2; exit 1; }
depmod -b "$dest/x" "$kver"
missing=()
for opt in CONFIG_XFS_QUOTA=y CONFIG_QFMT_V2=[ym] CONFIG_9P_FS=[ym] CONFIG_NET_9P_VIRTIO=[ym]; do
    grep -qx "$opt" "$config" || missing+=("${opt%%=*}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "fetch-kernel.sh: $pkg $version lacks ${missing[*]} (see $config):" \
        "it cannot run the project-quota tests" >&2
    exit 1
fi
echo "$pkg $version" > "$dest/version"
echo "fetch-kernel.sh: $pkg $version in $dest/x" >&2
