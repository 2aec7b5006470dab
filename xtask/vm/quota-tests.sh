#!/usr/bin/env bash
# Runs inside the virtual machine of `cargo xtask test-quota` (a kernel with project
# quotas): makes an xfs and an ext4 filesystem with project quotas on loop devices in the
# VM's memory, and runs on each the test binaries it is given, built on the host:
#
#   quota-tests.sh QUOTA_TESTS SUITE [MORE_WITH_TMPDIR...]
#
# QUOTA_TESTS (snapshot-overlay's tests/quota.rs) runs with SNAPSHOT_QUOTA_MOUNT naming
# the filesystem, printing what it measures; SUITE and the others also with TMPDIR there,
# so every store they open sits on a filesystem with project quotas. Exits 1 when any
# run failed.
set -uo pipefail

quota_tests=${1:?usage: quota-tests.sh QUOTA_TESTS SUITE...}
shift
failed=()

make_fs() {
    local fs=$1 img=/tmp/quota-$1.img dir=/tmp/quota-$1
    rm -f "$img"
    truncate -s 1536M "$img"
    case $fs in
        xfs) mkfs.xfs -q -f "$img" ;;
        ext4) mkfs.ext4 -q -F -O quota,project "$img" ;;
    esac || return 1
    mkdir -p "$dir"
    mount -o loop,prjquota "$img" "$dir" || return 1
    echo "$dir"
}

for fs in xfs ext4; do
    echo
    echo "==== quota: $fs with project quotas ===="
    if ! dir=$(make_fs "$fs"); then
        echo "quota-tests.sh: could not make the $fs filesystem with prjquota" >&2
        failed+=("$fs: filesystem")
        continue
    fi
    grep " $dir " /proc/mounts
    echo "---- $(basename "$quota_tests") (SNAPSHOT_QUOTA_MOUNT=$dir)"
    if ! SNAPSHOT_QUOTA_MOUNT=$dir SNAPSHOT_TEST_PRIVILEGED=1 "$quota_tests" --test-threads 2 --nocapture; then
        failed+=("$fs: $(basename "$quota_tests")")
    fi
    for bin in "$@"; do
        echo "---- $(basename "$bin") (TMPDIR=$dir)"
        if ! SNAPSHOT_QUOTA_MOUNT=$dir TMPDIR=$dir SNAPSHOT_TEST_PRIVILEGED=1 "$bin" --test-threads 2; then
            failed+=("$fs: $(basename "$bin")")
        fi
    done
    umount "$dir"
    rm -f "/tmp/quota-$fs.img"
done

echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "quota-tests.sh: failed: ${failed[*]}"
    exit 1
fi
echo "quota-tests.sh: every run passed on xfs and ext4"
