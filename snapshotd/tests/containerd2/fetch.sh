#!/usr/bin/env bash
# Fetches containerd 2.x from Debian's `sid` suite into a cache directory, without touching
# the machine's apt configuration: a private sources list, state and cache under DEST, then
# `apt-get download` and `dpkg-deb -x`. Idempotent: a finished DEST is left alone.
#
#   snapshotd/tests/containerd2/fetch.sh DEST
#
# Afterwards DEST/x/usr/bin holds containerd, ctr and containerd-shim-runc-v2, and
# DEST/version the package version. The mirror and keyring are the ones the machine's own
# Debian sources use (deb.debian.org and debian-archive-keyring when none are found).
set -euo pipefail

dest=${1:?usage: fetch.sh DEST}
if [ -x "$dest/x/usr/bin/containerd" ] && [ -s "$dest/version" ]; then
    exit 0
fi
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

uri=http://deb.debian.org/debian
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# The machine's Debian mirror: the first URIs/Signed-By of a deb822 source naming a
# Debian suite, or a one-line `deb` entry.
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    u=$(awk '/^URIs:/ {print $2; exit}' "$f")
    k=$(awk '/^Signed-By:/ {print $2; exit}' "$f")
    if [ -n "$u" ] && [[ "$u" == */debian ]]; then
        uri=$u
        [ -n "$k" ] && [ -f "$k" ] && keyring=$k
        break
    fi
done
if [ ! -f "$keyring" ]; then
    echo "fetch.sh: no Debian archive keyring at $keyring: apt-get install debian-archive-keyring" >&2
    exit 1
fi

mkdir -p "$dest/lists/partial" "$dest/cache/archives/partial" "$dest/etc"
echo "deb [signed-by=$keyring] $uri sid main" > "$dest/etc/sid.list"
apt_opts=(
    -o "Dir::Etc::SourceList=$dest/etc/sid.list"
    -o "Dir::Etc::SourceParts=-"
    -o "Dir::State::Lists=$dest/lists"
    -o "Dir::Cache=$dest/cache"
    -o "APT::Get::List-Cleanup=0"
)
echo "fetch.sh: reading $uri sid's package lists into $dest" >&2
apt-get -qq "${apt_opts[@]}" update
version=$(apt-cache "${apt_opts[@]}" policy containerd | awk '/Candidate:/ {print $2}')
case "$version" in
    2.*) ;;
    *)
        echo "fetch.sh: sid offers containerd '${version:-nothing}', not a 2.x: cannot test containerd 2.x" >&2
        exit 1
        ;;
esac
echo "fetch.sh: downloading containerd $version" >&2
rm -f "$dest"/containerd_*.deb
(cd "$dest" && apt-get -qq "${apt_opts[@]}" download "containerd=$version")
rm -rf "$dest/x"
dpkg-deb -x "$dest"/containerd_*.deb "$dest/x"
for b in containerd ctr containerd-shim-runc-v2; do
    if [ ! -x "$dest/x/usr/bin/$b" ]; then
        echo "fetch.sh: the containerd $version package has no usr/bin/$b" >&2
        exit 1
    fi
done
echo "$version" > "$dest/version"
echo "fetch.sh: containerd $version in $dest/x/usr/bin" >&2
