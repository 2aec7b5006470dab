//! What the kernel and the backing filesystem offer, probed once at open.
//!
//! - overlayfs is registered (`/proc/filesystems`), after a `modprobe overlay` if needed;
//! - the root's filesystem fills in `d_type` (containerd's `fs.SupportsDType`): overlayfs
//!   relies on it to find whiteouts, and XFS formatted with `ftype=0` or ext4 without the
//!   `filetype` feature do not;
//! - `index=off` is offered when the kernel has the `index` parameter;
//! - `userxattr` is needed in a user namespace other than the initial one (containerd's
//!   `NeedsUserXAttr`);
//! - `volatile` exists from Linux 5.10.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::FileType;

use crate::error::OverlayError;

const PROC_FILESYSTEMS: &str = "/proc/filesystems";
const UID_MAP: &str = "/proc/self/uid_map";
const INDEX_PARAM: &str = "/sys/module/overlay/parameters/index";
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// A `d_type` probe: true when readdir under the directory reports entry types. The
/// default is [`supports_d_type`]; tests inject others through
/// [`OverlaySnapshotter::open_with_probe`](crate::OverlaySnapshotter::open_with_probe).
pub type DTypeProbe = fn(&Path) -> io::Result<bool>;

/// What the kernel offers overlay mounts, as probed at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelFeatures {
    /// The overlay module has the `index` parameter, so mounts say `index=off`.
    pub index_off: bool,
    /// Overlay mounts need `userxattr` (a user namespace).
    pub userxattr: bool,
    /// The kernel knows the `volatile` option (Linux 5.10+).
    pub volatile: bool,
    /// Overlay takes idmapped lower layers (Linux 5.19+), so ID-mapped snapshots
    /// (`containerd.io/snapshot/uidmapping`) can be served: containerd's `remap-ids`.
    pub idmapped_lowers: bool,
}

/// Fails unless the kernel has overlayfs, trying `modprobe overlay` once.
///
/// # Errors
/// [`OverlayError::ReadSystemFile`] when `/proc/filesystems` cannot be read;
/// [`OverlayError::OverlayUnavailable`] when overlay is still missing after modprobe.
pub fn check_overlay_available() -> Result<(), OverlayError> {
    if overlay_registered()? {
        return Ok(());
    }
    let why = match Command::new("modprobe").arg("overlay").output() {
        Ok(out) if out.status.success() => {
            if overlay_registered()? {
                return Ok(());
            }
            io::Error::other("modprobe overlay succeeded but overlay is still not registered")
        }
        Ok(out) => io::Error::other(format!(
            "modprobe overlay: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => io::Error::new(e.kind(), format!("run modprobe overlay: {e}")),
    };
    Err(OverlayError::OverlayUnavailable {
        path: PROC_FILESYSTEMS.into(),
        source: why,
    })
}

fn overlay_registered() -> Result<bool, OverlayError> {
    let text = std::fs::read_to_string(PROC_FILESYSTEMS).map_err(|source| {
        OverlayError::ReadSystemFile {
            path: PROC_FILESYSTEMS.into(),
            source,
        }
    })?;
    Ok(filesystems_has_overlay(&text))
}

/// True if a `/proc/filesystems` listing names `overlay`.
pub fn filesystems_has_overlay(text: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
}

/// containerd's `fs.SupportsDType`, without writing where it can: reads the entries `dir`
/// already has (a snapshotter root holds `lock`, `metadata` and `snapshots` after its
/// first open) and answers false when readdir reports `DT_UNKNOWN` for one. Only an empty
/// `dir` gets a scratch directory (`.dtype-check-<pid>`), removed again; so a root that
/// opened once is probed on a full filesystem too.
///
/// # Errors
/// The OS error when `dir` cannot be read, or the scratch directory cannot be made.
pub fn supports_d_type(dir: &Path) -> io::Result<bool> {
    if let Some(known) = entries_have_d_type(dir)? {
        return Ok(known);
    }
    let scratch = dir.join(format!(".dtype-check-{}", std::process::id()));
    std::fs::create_dir(&scratch)?;
    let result = entries_have_d_type(dir);
    if let Err(e) = std::fs::remove_dir(&scratch) {
        log::warn!("removing d_type probe directory {}: {e}", scratch.display());
    }
    result?.ok_or_else(|| {
        io::Error::other(format!(
            "readdir of {} found no entry, not even {}",
            dir.display(),
            scratch.display()
        ))
    })
}

/// `Some(false)` when readdir of `dir` reports `DT_UNKNOWN` for an entry, `Some(true)` when
/// it has entries and reports every type, `None` when it is empty.
fn entries_have_d_type(dir: &Path) -> io::Result<Option<bool>> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut seen = false;
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        if matches!(entry.file_name().to_bytes(), b"." | b"..") {
            continue;
        }
        if entry.file_type() == FileType::Unknown {
            return Ok(Some(false));
        }
        seen = true;
    }
    Ok(seen.then_some(true))
}

/// Runs `probe` on `dir` and turns a "no" into the error that names the filesystem.
///
/// # Errors
/// [`OverlayError::NoDType`] when the filesystem lacks `d_type`;
/// [`OverlayError::DTypeProbe`] when the probe itself fails.
pub fn check_d_type(root: &Path, probe: DTypeProbe) -> Result<(), OverlayError> {
    match probe(root) {
        Ok(true) => Ok(()),
        Ok(false) => Err(OverlayError::NoDType {
            path: root.to_path_buf(),
            filesystem: filesystem_name(root),
            source: io::Error::other("readdir reported DT_UNKNOWN for an entry"),
        }),
        Err(source) => Err(OverlayError::DTypeProbe {
            path: root.to_path_buf(),
            source,
        }),
    }
}

/// The name of the filesystem holding `path`, from its `statfs` magic number.
pub fn filesystem_name(path: &Path) -> String {
    match rustix::fs::statfs(path) {
        Ok(st) => magic_name(st.f_type as u64),
        Err(e) => format!("an unknown filesystem (statfs failed: {e})"),
    }
}

/// The usual name for a `statfs` magic number.
pub fn magic_name(magic: u64) -> String {
    match magic {
        0xEF53 => "ext2/ext3/ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        TMPFS_MAGIC => "tmpfs".into(),
        0x794C_7630 => "overlay".into(),
        0xF2F5_2010 => "f2fs".into(),
        0x6969 => "nfs".into(),
        0x4D44 => "vfat".into(),
        0x2FC1_2FC1 => "zfs".into(),
        m => format!("a filesystem with magic {m:#x}"),
    }
}

/// True if a `/proc/self/uid_map` says the process is in a user namespace other than the
/// initial one (containerd's `userns.RunningInUserNS`): the initial namespace maps the
/// whole range, `0 0 4294967295`.
pub fn uid_map_is_user_namespace(uid_map: &str) -> bool {
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    fields != ["0", "0", "4294967295"]
}

pub use snapshot_core::mount::kernel_version;
use snapshot_core::mount::running_kernel;

/// containerd's `NeedsUserXAttr`: off in the initial user namespace and on tmpfs (which
/// refuses user xattrs), on from Linux 5.11 in a user namespace. Older kernels that the
/// distributions patched for unprivileged overlay do without it.
///
/// # Errors
/// [`OverlayError::ReadSystemFile`] when `/proc/self/uid_map` exists but cannot be read.
pub fn needs_userxattr(root: &Path) -> Result<bool, OverlayError> {
    let map = match std::fs::read_to_string(UID_MAP) {
        Ok(m) => m,
        // No user namespaces in this kernel: the initial namespace.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(OverlayError::ReadSystemFile {
                path: UID_MAP.into(),
                source,
            })
        }
    };
    if !uid_map_is_user_namespace(&map) {
        return Ok(false);
    }
    if rustix::fs::statfs(root).is_ok_and(|st| st.f_type as u64 == TMPFS_MAGIC) {
        return Ok(false);
    }
    Ok(running_kernel().is_some_and(|v| v >= (5, 11)))
}

/// Probes everything but `d_type`; `userxattr` is forced when `force_userxattr` is set.
///
/// # Errors
/// As [`needs_userxattr`].
pub fn detect(root: &Path, force_userxattr: Option<bool>) -> Result<KernelFeatures, OverlayError> {
    let userxattr = match force_userxattr {
        Some(v) => v,
        None => needs_userxattr(root)?,
    };
    Ok(KernelFeatures {
        index_off: PathBuf::from(INDEX_PARAM).exists(),
        userxattr,
        volatile: running_kernel().is_some_and(|v| v >= (5, 10)),
        // The kernel's overlay, and the root's filesystem (not every one takes
        // idmapped mounts: overlayfs, NFS and FUSE do not).
        idmapped_lowers: snapshot_core::idmap::overlay_idmaps_lowers()
            && match snapshot_core::mount::idmapped_mounts_on(root) {
                Ok(()) => true,
                Err(e) => {
                    log::info!(
                        "{} cannot be idmapped ({e}): ID-mapped snapshots (remap-ids) are \
                         refused",
                        root.display()
                    );
                    false
                }
            },
    })
}

/// Whether an overlay with its upper directory on `root`'s filesystem mounts: the check
/// containerd's overlay plugin makes (`overlayutils.Supported`), done by mounting one in a
/// scratch directory `<root>/.overlay-check-<pid>` (created with `root` if needed) and
/// taking it off again. It writes, so it is for choosing a backend for a new root; a root
/// that holds a store already says which backend made it
/// ([`snapshot_core::lifecycle::recorded_backend`]).
///
/// # Errors
/// Why not, naming the path: the mount's error (no overlay module, no privilege, an upper
/// filesystem overlay does not take, such as overlayfs itself), or the scratch directory's.
pub fn overlay_mounts_on(root: &Path) -> snapshot_core::Result<()> {
    use snapshot_core::Error;
    let root = snapshot_core::lifecycle::prepare_root(root)?;
    let scratch = root.join(format!(".overlay-check-{}", std::process::id()));
    let _ = snapshot_core::layout::remove_tree(&scratch);
    let result = (|| {
        let mut dirs = Vec::new();
        for n in ["lower", "upper", "work", "merged"] {
            let p = scratch.join(n);
            std::fs::create_dir_all(&p).map_err(|e| Error::io("create directory", &p, e))?;
            dirs.push(p.to_string_lossy().into_owned());
        }
        let m = snapshot_core::Mount::new(
            "overlay",
            "overlay",
            vec![
                format!("lowerdir={}", dirs[0]),
                format!("upperdir={}", dirs[1]),
                format!("workdir={}", dirs[2]),
            ],
        );
        let merged = Path::new(&dirs[3]);
        snapshot_core::mount::mount_all(&[m], merged)?;
        snapshot_core::mount::unmount_all(merged)
    })();
    if let Err(e) = snapshot_core::layout::remove_tree(&scratch) {
        log::warn!("removing the overlay check {}: {e}", scratch.display());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_filesystems() {
        assert!(filesystems_has_overlay(
            "nodev\tsysfs\n\text4\nnodev\toverlay\n"
        ));
        assert!(!filesystems_has_overlay(
            "nodev\tsysfs\n\text4\nnodev\toverlayfs-like\n"
        ));
        assert!(!filesystems_has_overlay(""));
    }

    #[test]
    fn user_namespace_from_uid_map() {
        assert!(!uid_map_is_user_namespace(
            "         0          0 4294967295\n"
        ));
        assert!(uid_map_is_user_namespace(
            "         0       1000          1\n"
        ));
        assert!(uid_map_is_user_namespace("0 100000 65536\n"));
        assert!(
            uid_map_is_user_namespace(""),
            "an empty map is a namespace with no mapping"
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.10.0-23-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("4.19"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
        assert!((5, 9) < (5, 10) && (5, 10) < (5, 11) && (4, 99) < (5, 10));
    }

    #[test]
    fn d_type_probe_on_this_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        // The test machine's filesystems (ext4, tmpfs) all report d_type.
        assert!(supports_d_type(dir.path()).unwrap());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the probe cleans up"
        );
        check_d_type(dir.path(), supports_d_type).unwrap();
    }

    #[test]
    fn a_failing_probe_names_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_d_type(dir.path(), |_| Ok(false)).unwrap_err();
        let name = filesystem_name(dir.path());
        let msg = err.to_string();
        assert!(
            msg.contains(&name) && msg.contains("d_type") && msg.contains("ftype=1"),
            "{msg}"
        );
        let err = check_d_type(dir.path(), |_| Err(io::Error::from_raw_os_error(13))).unwrap_err();
        assert!(matches!(err, OverlayError::DTypeProbe { .. }), "{err:?}");
    }

    #[test]
    fn magic_names() {
        assert_eq!(magic_name(0x5846_5342), "xfs");
        assert_eq!(magic_name(0xEF53), "ext2/ext3/ext4");
        assert_eq!(magic_name(0x1234), "a filesystem with magic 0x1234");
    }
}
