//! Layer size limits: containerd 2.x's `containerd.io/snapshot/max-size` label, and what
//! a filesystem must offer to enforce one on a directory (project quotas).
//!
//! A backend that cannot enforce a limit refuses it: a container must never believe its
//! layer is capped when it is not.

use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// What a store without project quotas says to a limit: FailedPrecondition naming
/// `what`, `root`, its filesystem and what a limit needs.
pub fn refuse_limit(what: &str, root: &Path) -> Error {
    let mounts = crate::mount::mountinfo().unwrap_or_default();
    let fs = mount_of(&mounts, root)
        .map(|m| format!("{} at {}", m.fs_type, m.mount_point.display()))
        .unwrap_or_else(|| "an unknown filesystem".into());
    Error::failed_precondition(format!(
        "{what}: a layer limit needs project quotas on the filesystem of {} ({fs}): xfs \
         mounted with prjquota, or ext4 made with -O project,quota and mounted with \
         prjquota; leave the limit out to run without one",
        root.display()
    ))
}

/// The project quotas of the filesystem holding a store's root: every layer of an active
/// snapshot gets a project of its own, `base + id` (the root directory's project ID plus
/// the snapshot's internal id), inherited by every file made in it. A root without a
/// project ID gets one at its first open on such a filesystem: the base of a free range
/// of 2^20 IDs. The quota then caps
/// the layer (a hard block limit, the kernel's ENOSPC or EDQUOT at the limit) and counts
/// it: reading a layer's usage is one `quotactl`, whatever its size.
///
/// Project IDs are a filesystem's, not a directory's: another user of the filesystem may
/// hold some. A project that already counts files when a layer would take it is left
/// alone (that layer gets no project, and a limit on it is refused); give the root a
/// project ID of its own range (`chattr -p BASE ROOT`, before the first start) to keep
/// clear of others.
#[derive(Debug)]
pub struct ProjectQuotas {
    device: std::ffi::CString,
    base: u32,
}

/// A layer's quota: its hard limit and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProjectUsage {
    /// The hard limit in bytes (0: none).
    pub limit: u64,
    /// Bytes allocated (the kernel counts 512-byte blocks, delayed allocations included).
    pub bytes: u64,
    /// Inodes.
    pub inodes: u64,
}

impl ProjectQuotas {
    /// The project quotas of `root`'s filesystem, or `None` when it has none enforced
    /// (not xfs or ext4, not mounted with `prjquota`, or the kernel refuses the calls).
    ///
    /// # Errors
    /// Unknown when the root cannot be read.
    pub fn probe(root: &Path) -> Result<Option<ProjectQuotas>> {
        let mounts = crate::mount::mountinfo()?;
        if !project_quotas_in(&mounts, root) {
            return Ok(None);
        }
        let meta = std::fs::metadata(root).map_err(|e| Error::io("stat", root, e))?;
        let Some(device) = block_device(&mounts, root, meta.dev()) else {
            log::warn!(
                "{}: the filesystem has project quotas, but its block device was not found \
                 in /proc/self/mountinfo nor could a node for it be made: layer limits are \
                 refused",
                root.display()
            );
            return Ok(None);
        };
        let base = sys::project_of(root).map_err(|e| Error::io("read the project of", root, e))?;
        let mut q = ProjectQuotas { device, base };
        if let Err(e) = q.read(base) {
            log::warn!(
                "{}: project quotas are mounted but quotactl refuses them ({e}): layer limits \
                 are refused",
                root.display()
            );
            return Ok(None);
        }
        if base == 0 {
            let picked = q.pick_base(meta.ino()).and_then(|b| {
                sys::set_project(root, b, false)
                    .and_then(|()| std::fs::File::open(root)?.sync_all())
                    .map(|()| b)
                    .map_err(|e| Error::io("give a project ID to", root, e))
            });
            match picked {
                Ok(b) => q.base = b,
                Err(e) => {
                    log::warn!("{e}: layer limits are refused");
                    return Ok(None);
                }
            }
            log::info!(
                "{}: its layers take project IDs from {} on (the root's own project ID)",
                root.display(),
                q.base
            );
        }
        Ok(Some(q))
    }

    /// A free range of 2^20 project IDs for a root that has none (its project ID is 0),
    /// starting at one its inode number picks, so that two stores on one filesystem do
    /// not take the same IDs: the first range whose base and first layer's ID count
    /// nothing.
    fn pick_base(&self, ino: u64) -> Result<u32> {
        const RANGES: u64 = 4094;
        for k in 0..RANGES {
            let r = (ino + k) % RANGES + 1;
            let base = (r << 20) as u32;
            let free = |p: u32| {
                self.read(p)
                    .map(|u| u.inodes == 0 && u.bytes == 0 && u.limit == 0)
            };
            if free(base)? && free(base + 1)? {
                return Ok(base);
            }
        }
        Err(Error::failed_precondition(format!(
            "no free range of project IDs on {}: give the store's root a project ID \
             (chattr -p BASE ROOT)",
            self.device.to_string_lossy()
        )))
    }

    /// The root directory's project ID, which every layer's is offset from.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// The project of the layer of the snapshot with internal id `id`, `None` past the
    /// 32-bit project IDs.
    pub fn project(&self, id: u64) -> Option<u32> {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.base.checked_add(id))
            .filter(|&p| p != u32::MAX)
    }

    /// Gives the empty directories `dirs` (a new layer and the directories its writes
    /// pass through) the project of snapshot `id`, inherited by what is made in them.
    /// Returns false, changing nothing, when the project already counts files (another
    /// user of the filesystem holds it) or `id` has none. Not durable by itself: the
    /// caller fsyncs.
    ///
    /// # Errors
    /// Unknown when a call fails.
    pub fn assign(&self, id: u64, dirs: &[PathBuf]) -> Result<bool> {
        let Some(project) = self.project(id) else {
            return Ok(false);
        };
        let held = self.read(project)?;
        if held.inodes > 0 || held.bytes > 0 {
            log::warn!(
                "project quota {project} already counts {} inodes outside this store: the \
                 layer of snapshot id {id} gets no project (give the root a project ID of \
                 its own range with chattr -p)",
                held.inodes
            );
            return Ok(false);
        }
        for d in dirs {
            sys::set_project(d, project, true)
                .map_err(|e| Error::io("set the project of", d, e))?;
        }
        Ok(true)
    }

    /// The project of the directory `dir` when it is one this store gave a layer (not 0,
    /// not the root's own).
    pub fn project_of(&self, dir: &Path) -> Option<u32> {
        sys::project_of(dir)
            .ok()
            .filter(|&p| p != 0 && p != self.base)
    }

    /// Whether `dir` is the layer of snapshot `id` with its own project.
    pub fn owns(&self, id: u64, dir: &Path) -> bool {
        self.project(id).is_some() && self.project_of(dir) == self.project(id)
    }

    /// Sets the hard limit of `project` to `bytes` (rounded up to 512-byte blocks; 0:
    /// none).
    ///
    /// # Errors
    /// Unknown when quotactl fails.
    pub fn set_limit(&self, project: u32, bytes: u64) -> Result<()> {
        sys::set_limit(&self.device, project, bytes.div_ceil(512)).map_err(|e| {
            Error::unknown(format!(
                "set the limit of project quota {project} on {}",
                self.device.to_string_lossy()
            ))
            .with_source(e)
        })
    }

    /// The quota of `project`.
    ///
    /// # Errors
    /// Unknown when quotactl fails.
    pub fn read(&self, project: u32) -> Result<ProjectUsage> {
        sys::get_quota(&self.device, project).map_err(|e| {
            Error::unknown(format!(
                "read project quota {project} on {}",
                self.device.to_string_lossy()
            ))
            .with_source(e)
        })
    }
}

/// The block device of the filesystem `dev` holding `root`: the mount's source when it
/// is that device, else a node made for it at `<root>/quota-device` (a mount namespace
/// may not show the source).
fn block_device(mounts: &[MountEntry], root: &Path, dev: u64) -> Option<std::ffi::CString> {
    use std::os::unix::fs::FileTypeExt;
    let is_dev = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == dev)
    };
    let source = mount_of(mounts, root).map(|m| PathBuf::from(&m.source));
    let path = match source {
        Some(s) if s.is_absolute() && is_dev(&s) => s,
        _ => {
            let node = root.join("quota-device");
            if !is_dev(&node) {
                let _ = std::fs::remove_file(&node);
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &node,
                    rustix::fs::FileType::BlockDevice,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    dev,
                )
                .ok()?;
            }
            node
        }
    };
    std::ffi::CString::new(path.into_os_string().into_vec()).ok()
}

/// The crate's quota helpers: `quotactl(2)` on project quotas and the `FS_IOC_FSGETXATTR`
/// / `FS_IOC_FSSETXATTR` ioctls, the only calls here that take raw pointers. Each passes a
/// live, properly laid-out kernel structure and a descriptor or NUL-terminated path that
/// outlives the call.
mod sys {
    use std::ffi::CStr;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::path::Path;

    use super::ProjectUsage;

    const PRJQUOTA: libc::c_int = 2;
    const Q_XGETQUOTA: libc::c_int = (('X' as libc::c_int) << 8) + 3;
    const Q_XSETQLIM: libc::c_int = (('X' as libc::c_int) << 8) + 4;
    const FS_DQUOT_VERSION: i8 = 1;
    const FS_PROJ_QUOTA: i8 = 2;
    const FS_DQ_BSOFT: u16 = 1 << 2;
    const FS_DQ_BHARD: u16 = 1 << 3;
    const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
    const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
    const FS_XFLAG_PROJINHERIT: u32 = 0x200;

    /// `struct fs_disk_quota` (linux/dqblk_xfs.h), which ext4 answers too.
    #[repr(C)]
    #[derive(Default)]
    struct FsDiskQuota {
        d_version: i8,
        d_flags: i8,
        d_fieldmask: u16,
        d_id: u32,
        d_blk_hardlimit: u64,
        d_blk_softlimit: u64,
        d_ino_hardlimit: u64,
        d_ino_softlimit: u64,
        d_bcount: u64,
        d_icount: u64,
        d_itimer: i32,
        d_btimer: i32,
        d_iwarns: u16,
        d_bwarns: u16,
        d_itimer_hi: i8,
        d_btimer_hi: i8,
        d_rtbtimer_hi: i8,
        d_padding2: i8,
        d_rtb_hardlimit: u64,
        d_rtb_softlimit: u64,
        d_rtbcount: u64,
        d_rtbtimer: i32,
        d_rtbwarns: u16,
        d_padding3: i16,
        d_padding4: [u8; 8],
    }

    /// `struct fsxattr` (linux/fs.h).
    #[repr(C)]
    #[derive(Default)]
    struct FsXattr {
        fsx_xflags: u32,
        fsx_extsize: u32,
        fsx_nextents: u32,
        fsx_projid: u32,
        fsx_cowextsize: u32,
        fsx_pad: [u8; 8],
    }

    const _: () = assert!(std::mem::size_of::<FsDiskQuota>() == 112);
    const _: () = assert!(std::mem::size_of::<FsXattr>() == 28);

    fn quotactl(cmd: libc::c_int, device: &CStr, id: u32, q: &mut FsDiskQuota) -> io::Result<()> {
        let qcmd = (cmd << 8) | PRJQUOTA;
        // SAFETY: see the module comment.
        let rc = unsafe {
            libc::quotactl(
                qcmd,
                device.as_ptr(),
                id as libc::c_int,
                (q as *mut FsDiskQuota).cast(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn get_quota(device: &CStr, project: u32) -> io::Result<ProjectUsage> {
        let mut q = FsDiskQuota::default();
        match quotactl(Q_XGETQUOTA, device, project, &mut q) {
            // xfs: no dquot yet, i.e. nothing counted and no limit.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(ProjectUsage::default()),
            Err(e) => Err(e),
            Ok(()) => Ok(ProjectUsage {
                limit: q.d_blk_hardlimit.saturating_mul(512),
                bytes: q.d_bcount.saturating_mul(512),
                inodes: q.d_icount,
            }),
        }
    }

    pub(super) fn set_limit(device: &CStr, project: u32, blocks: u64) -> io::Result<()> {
        let mut q = FsDiskQuota {
            d_version: FS_DQUOT_VERSION,
            d_flags: FS_PROJ_QUOTA,
            d_fieldmask: FS_DQ_BSOFT | FS_DQ_BHARD,
            d_id: project,
            d_blk_hardlimit: blocks,
            d_blk_softlimit: blocks,
            ..FsDiskQuota::default()
        };
        quotactl(Q_XSETQLIM, device, project, &mut q)
    }

    fn open_dir(dir: &Path) -> io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)
    }

    fn get_xattr(f: &std::fs::File) -> io::Result<FsXattr> {
        let mut x = FsXattr::default();
        // SAFETY: see the module comment.
        if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FSGETXATTR, &mut x as *mut FsXattr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(x)
    }

    pub(super) fn project_of(dir: &Path) -> io::Result<u32> {
        Ok(get_xattr(&open_dir(dir)?)?.fsx_projid)
    }

    /// Sets the project of `dir`, inherited by what is made in it with `inherit`.
    pub(super) fn set_project(dir: &Path, project: u32, inherit: bool) -> io::Result<()> {
        let f = open_dir(dir)?;
        let mut x = get_xattr(&f)?;
        x.fsx_projid = project;
        if inherit {
            x.fsx_xflags |= FS_XFLAG_PROJINHERIT;
        }
        // SAFETY: see the module comment.
        if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FSSETXATTR, &x as *const FsXattr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
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
