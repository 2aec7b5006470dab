#!/usr/bin/env bash
# Runs inside the virtual machine of `cargo xtask bench --only quota`: makes xfs and ext4
# with project quotas on loop devices in the VM's memory and runs the benchmark binary on
# each with the given arguments:
#
#   bench-quota.sh SNAPSHOT_BENCH ARGS...
set -euo pipefail

bench=${1:?usage: bench-quota.sh SNAPSHOT_BENCH ARGS...}
shift
for fs in xfs ext4; do
    img=/tmp/bench-$fs.img dir=/tmp/bench-$fs
    truncate -s 2560M "$img"
    case $fs in
        xfs) mkfs.xfs -q -f "$img" ;;
        # Inodes for 200,000 files twice (the library's store and the daemon's).
        ext4) mkfs.ext4 -q -F -O quota,project -N 600000 "$img" ;;
    esac
    mkdir -p "$dir"
    mount -o loop,prjquota "$img" "$dir"
    echo
    echo "==== bench: overlay on $fs with project quotas ($(grep " $dir " /proc/mounts | cut -d' ' -f4)) ===="
    "$bench" --root "$dir/bench" --backend overlay "$@"
    umount "$dir"
    rm -f "$img"
done
