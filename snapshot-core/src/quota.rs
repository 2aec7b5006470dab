//! Layer size limits: containerd 2.x's `containerd.io/snapshot/max-size` label, and what
//! a filesystem must offer to enforce one on a directory (project quotas).
//!
//! A backend that cannot enforce a limit refuses it: a container must never believe its
//! layer is capped when it is not.

use std::path::Path;

use crate::error::{Error, Result};
use crate::mount::{mount_of, MountEntry};

/// The label that caps an active snapshot's own layer at this many bytes (containerd
/// 2.x, `snapshots.LabelSnapshotMaxSize`).
pub const MAX_SIZE_LABEL: &str = "containerd.io/snapshot/max-size";

/// Parses a size: decimal bytes, or with a binary suffix `K`, `M`, `G`, `T` (`KiB`, ...
/// also read). `what` names the value in the error.
///
/// # Errors
/// InvalidArgument naming `what` for anything else, zero, or more than 2^64 bytes.
pub fn parse_size(what: &str, value: &str) -> Result<u64> {
    let bad = |why: &str| {
        Error::invalid_argument(format!(
            "{what}={value:?} {why}: give bytes, e.g. 10737418240 or 10G (K, M, G and T \
             are powers of 1024)"
        ))
    };
    let v = value.trim();
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad("is not a size"));
    }
    let (n, unit) = v.split_at(digits);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad("has an unknown unit")),
    };
    let n: u64 = n.parse().map_err(|_| bad("is too large"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("is too large"))?;
    if bytes == 0 {
        return Err(bad("is zero"));
    }
    Ok(bytes)
}

/// Whether the filesystem mounted at the entry holding `path` (in `mounts`) enforces
/// project quotas: xfs or ext4 mounted with `prjquota` (xfs also shows `pquota`).
pub fn project_quotas_in(mounts: &[MountEntry], path: &Path) -> bool {
    mount_of(mounts, path).is_some_and(|m| {
        matches!(m.fs_type.as_str(), "xfs" | "ext4")
            && m.super_options
                .iter()
                .any(|o| o == "prjquota" || o == "pquota")
    })
}

/// Refuses a size limit on the layers under `root` where none can be enforced. `what`
/// names the limit (the label, or the daemon's `--max-size`).
///
/// # Errors
/// FailedPrecondition naming `what`, `root`, its filesystem and what it needs; always,
/// for now, since only project quotas could enforce it and enforcing them is not built
/// yet (NotImplemented where the filesystem has them).
pub fn refuse_limit(what: &str, root: &Path) -> Result<()> {
    let mounts = crate::mount::mountinfo()?;
    let fs = mount_of(&mounts, root)
        .map(|m| format!("{} at {}", m.fs_type, m.mount_point.display()))
        .unwrap_or_else(|| "an unknown filesystem".into());
    if project_quotas_in(&mounts, root) {
        return Err(Error::not_implemented(format!(
            "{what}: {} is on {fs}, which has project quotas, but this release does not \
             enforce layer limits with them yet: leave the limit out",
            root.display()
        )));
    }
    Err(Error::failed_precondition(format!(
        "{what}: a layer limit needs project quotas on the filesystem of {} ({fs}): xfs \
         mounted with prjquota, or ext4 made with -O project,quota and mounted with \
         prjquota; leave the limit out to run without one",
        root.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::parse_mountinfo;
    use crate::ErrorKind;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("x", "4096").unwrap(), 4096);
        assert_eq!(parse_size("x", "10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("x", "512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("x", "1k").unwrap(), 1024);
        for bad in [
            "",
            "G",
            "-1",
            "1.5G",
            "0",
            "10Q",
            "99999999999999999999",
            "20000000T",
        ] {
            let e = parse_size(MAX_SIZE_LABEL, bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
            assert!(e.to_string().contains(MAX_SIZE_LABEL), "{e}");
        }
    }

    #[test]
    fn project_quotas_come_from_the_mount_options() {
        let text = "22 1 8:1 / / rw - ext4 /dev/sda1 rw,relatime\n\
            30 22 8:2 / /var/lib rw - xfs /dev/sdb1 rw,attr2,inode64,prjquota\n\
            31 22 8:3 / /srv rw - ext4 /dev/sdc1 rw,prjquota\n\
            32 22 0:40 / /tmp rw - tmpfs tmpfs rw,prjquota\n";
        let m = parse_mountinfo(text);
        assert!(!project_quotas_in(&m, Path::new("/home")));
        assert!(project_quotas_in(&m, Path::new("/var/lib/snapshotd")));
        assert!(project_quotas_in(&m, Path::new("/srv/x")));
        assert!(
            !project_quotas_in(&m, Path::new("/tmp/x")),
            "tmpfs is not checked"
        );
    }
}
