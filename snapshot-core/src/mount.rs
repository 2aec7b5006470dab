//! Mounting what a snapshotter returns, for callers and tests.
//!
//! [`mount_all`] mounts a `[Mount]` list at a target; [`unmount_all`] takes every mount off
//! a target. Overlay mounts use the new mount API (`fsopen` + one `fsconfig` per
//! `lowerdir+` layer, kernel 6.8+) when the kernel has it, so lowerdir lists far longer
//! than mount(2)'s one-page option limit mount. On older kernels the legacy mount(2) is
//! used; when its option string would exceed the page, the lowerdirs are rewritten
//! relative to their common directory and mounted from a thread whose working directory is
//! that directory. An option string that is still too long is refused: the kernel would
//! silently cut it and mount a truncated stack.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use crate::error::{Error, Result};
use crate::idmap::{IdMap, GIDMAP_OPTION, UIDMAP_OPTION};
use crate::types::Mount;

/// The longest option string mount(2) takes whole (one page minus the terminating NUL).
pub const LEGACY_OPTIONS_MAX: usize = 4095;

/// The longest string value one `fsconfig` call takes.
const FSCONFIG_VALUE_MAX: usize = 255;

/// Mount options split into mount(2) flags and the filesystem's data string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOptions {
    /// Flags such as `MS_RDONLY`, `MS_BIND`, `MS_REC`.
    pub flags: MountFlags,
    /// Options the filesystem interprets, in order (`lowerdir=...`, `subvolid=5`).
    pub data: Vec<String>,
    /// The value of a `uidmap=` option (containerd 2.x: idmap the mount), taken out of
    /// the data.
    pub uidmap: Option<String>,
    /// The value of a `gidmap=` option, taken out of the data.
    pub gidmap: Option<String>,
}

/// Splits options as containerd's `parseMountOptions` does: flag words become flags,
/// `uidmap=`/`gidmap=` the ID mapping, everything else is filesystem data.
pub fn parse_options(options: &[String]) -> ParsedOptions {
    let mut out = ParsedOptions {
        flags: MountFlags::empty(),
        data: Vec::new(),
        uidmap: None,
        gidmap: None,
    };
    for o in options {
        if let Some(v) = o.strip_prefix(UIDMAP_OPTION) {
            out.uidmap = Some(v.to_string());
            continue;
        }
        if let Some(v) = o.strip_prefix(GIDMAP_OPTION) {
            out.gidmap = Some(v.to_string());
            continue;
        }
        let (set, flag) = match o.as_str() {
            "async" => (false, MountFlags::SYNCHRONOUS),
            "atime" => (false, MountFlags::NOATIME),
            "bind" => (true, MountFlags::BIND),
            "defaults" => continue,
            "dev" => (false, MountFlags::NODEV),
            "diratime" => (false, MountFlags::NODIRATIME),
            "dirsync" => (true, MountFlags::DIRSYNC),
            "exec" => (false, MountFlags::NOEXEC),
            "mand" => (true, MountFlags::PERMIT_MANDATORY_FILE_LOCKING),
            "noatime" => (true, MountFlags::NOATIME),
            "nodev" => (true, MountFlags::NODEV),
            "nodiratime" => (true, MountFlags::NODIRATIME),
            "nomand" => (false, MountFlags::PERMIT_MANDATORY_FILE_LOCKING),
            "noexec" => (true, MountFlags::NOEXEC),
            "norelatime" => (false, MountFlags::RELATIME),
            "nostrictatime" => (false, MountFlags::STRICTATIME),
            "nosuid" => (true, MountFlags::NOSUID),
            "rbind" => (true, MountFlags::BIND | MountFlags::REC),
            "relatime" => (true, MountFlags::RELATIME),
            "ro" => (true, MountFlags::RDONLY),
            "rw" => (false, MountFlags::RDONLY),
            "strictatime" => (true, MountFlags::STRICTATIME),
            "suid" => (false, MountFlags::NOSUID),
            "sync" => (true, MountFlags::SYNCHRONOUS),
            _ => {
                out.data.push(o.clone());
                continue;
            }
        };
        if set {
            out.flags |= flag;
        } else {
            out.flags &= !flag;
        }
    }
    out
}

/// Mounts every mount of `mounts` at `target`, in order (later ones stack on earlier
/// ones). If one fails, the ones already mounted are taken off again.
///
/// # Errors
/// Unknown naming the target, the mount type and the source, with the OS error;
/// InvalidArgument for an overlay option string that cannot be passed whole.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                if let Err(u) = unmount(target) {
                    log::warn!("undoing a failed mount at {}: {u}", target.display());
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts `target` once.
///
/// # Errors
/// Unknown with the OS error (EINVAL when nothing is mounted there).
pub fn unmount(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, UnmountFlags::empty())
        .map_err(|e| Error::io("unmount", target, e.into()))
}

/// Unmounts everything mounted at `target`, until nothing is; fine when nothing is. A busy
/// mount is tried again for up to 2.5 s (50 times, 50 ms apart, as containerd's
/// `UnmountAll`): a process forked anywhere in this one holds copies of its descriptors,
/// and so keeps their mounts busy, until it execs.
///
/// # Errors
/// Unknown when an unmount fails for another reason than "not mounted", or stays busy (a
/// process still uses it).
pub fn unmount_all(target: &Path) -> Result<()> {
    let mut busy = 0;
    loop {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Ok(()) => busy = 0,
            Err(Errno::INVAL) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::BUSY) if busy < 49 => {
                busy += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(Error::io("unmount", target, e.into())),
        }
    }
}

fn mount_err(m: &Mount, target: &Path, e: Errno) -> Error {
    Error::unknown(format!(
        "mount {} {:?} at {} (options {:?})",
        m.kind,
        m.source,
        target.display(),
        m.options.join(",")
    ))
    .with_source(std::io::Error::from(e))
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let parsed = parse_options(&m.options);
    if let Some(maps) = idmapping(m, &parsed)? {
        return mount_idmapped(m, target, &parsed, &maps);
    }
    if m.kind == "bind" || parsed.flags.contains(MountFlags::BIND) {
        return mount_bind(m, target, &parsed);
    }
    if m.kind == "overlay" {
        return mount_overlay(m, target, &parsed);
    }
    let data = CString::new(parsed.data.join(","))
        .map_err(|_| Error::invalid_argument(format!("mount options {:?} hold NUL", m.options)))?;
    rustix::mount::mount(
        m.source.as_str(),
        target,
        m.kind.as_str(),
        parsed.flags,
        &*data,
    )
    .map_err(|e| mount_err(m, target, e))
}

fn mount_bind(m: &Mount, target: &Path, parsed: &ParsedOptions) -> Result<()> {
    let src = Path::new(&m.source);
    if parsed.flags.contains(MountFlags::REC) {
        rustix::mount::mount_bind_recursive(src, target)
    } else {
        rustix::mount::mount_bind(src, target)
    }
    .map_err(|e| mount_err(m, target, e))?;
    // A bind ignores every flag but MS_REC; read-only and the others need a remount.
    let extra = parsed.flags & !(MountFlags::BIND | MountFlags::REC);
    if !extra.is_empty() {
        if let Err(e) = rustix::mount::mount_remount(target, MountFlags::BIND | extra, "") {
            let _ = unmount(target);
            return Err(mount_err(m, target, e));
        }
    }
    Ok(())
}

/// The mapping a mount's `uidmap=`/`gidmap=` options ask for.
///
/// # Errors
/// InvalidArgument for a malformed value or for one option without the other (an
/// idmapped mount needs both; containerd's mount code would silently mount unmapped).
fn idmapping(m: &Mount, parsed: &ParsedOptions) -> Result<Option<(IdMap, IdMap)>> {
    match (&parsed.uidmap, &parsed.gidmap) {
        (None, None) => Ok(None),
        (Some(u), Some(g)) => Ok(Some((
            IdMap::parse("mount option uidmap", u)?,
            IdMap::parse("mount option gidmap", g)?,
        ))),
        _ => Err(Error::invalid_argument(format!(
            "{} mount of {:?} has only one of uidmap= and gidmap=: an idmapped mount needs \
             both (label the snapshot with containerd.io/snapshot/uidmapping and \
             containerd.io/snapshot/gidmapping)",
            m.kind, m.source
        ))),
    }
}

/// An idmapped mount, as containerd 2.x makes it: a bind becomes an idmapped clone of
/// its source moved to `target`; an overlay gets idmapped clones of its lower layers
/// (one of their common directory where they share one), attached under a private
/// temporary directory for the overlay mount and detached after it (the overlay keeps
/// its own references). The upper and work directories are not idmapped: the
/// snapshotter gave the upper directory to the mapped root.
fn mount_idmapped(
    m: &Mount,
    target: &Path,
    parsed: &ParsedOptions,
    maps: &(IdMap, IdMap),
) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        Error::unknown(format!(
            "idmapped {} mount of {:?} at {} ({what})",
            m.kind,
            m.source,
            target.display()
        ))
        .with_source(e)
    };
    let userns = crate::idmount::user_namespace(&maps.0, &maps.1)
        .map_err(|e| fail("making the user namespace", e))?;
    let read_only = parsed.flags.contains(MountFlags::RDONLY);
    if m.kind == "bind" || parsed.flags.contains(MountFlags::BIND) {
        let recursive = parsed.flags.contains(MountFlags::REC);
        let tree =
            crate::idmount::idmapped_tree(Path::new(&m.source), &userns, read_only, recursive)
                .map_err(|e| fail("idmapping the source", e))?;
        rustix::mount::move_mount(
            &tree,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| fail("attaching it", e.into()))?;
        let extra = parsed.flags & !(MountFlags::BIND | MountFlags::REC | MountFlags::RDONLY);
        if !extra.is_empty() {
            let flags = MountFlags::BIND | extra | (parsed.flags & MountFlags::RDONLY);
            if let Err(e) = rustix::mount::mount_remount(target, flags, "") {
                let _ = unmount(target);
                return Err(mount_err(m, target, e));
            }
        }
        return Ok(());
    }
    if m.kind != "overlay" {
        return Err(Error::invalid_argument(format!(
            "{} mount of {:?} carries uidmap=/gidmap=: only bind and overlay mounts can be \
             idmapped",
            m.kind, m.source
        )));
    }
    let parts = overlay_parts(&parsed.data);
    let scratch = IdmapScratch::new().map_err(|e| fail("making a temporary directory", e))?;
    let common = common_dir(&parts.lower);
    let mut lowers = Vec::with_capacity(parts.lower.len());
    match &common {
        Some(dir) => {
            let at = scratch
                .attach(dir, &userns)
                .map_err(|e| fail("idmapping the layers", e))?;
            for l in &parts.lower {
                let rel = Path::new(l).strip_prefix(dir).unwrap_or(Path::new(""));
                lowers.push(at.join(rel).to_string_lossy().into_owned());
            }
        }
        None => {
            for l in &parts.lower {
                let at = scratch
                    .attach(Path::new(l), &userns)
                    .map_err(|e| fail("idmapping a layer", e))?;
                lowers.push(at.to_string_lossy().into_owned());
            }
        }
    }
    let mut data: Vec<String> = Vec::with_capacity(parsed.data.len());
    for o in &parsed.data {
        if o.starts_with("lowerdir=") {
            data.push(format!("lowerdir={}", lowers.join(":")));
        } else {
            data.push(o.clone());
        }
    }
    let plain = ParsedOptions {
        flags: parsed.flags,
        data,
        uidmap: None,
        gidmap: None,
    };
    mount_overlay(m, target, &plain)
}

/// The deepest directory every path in `paths` lies under, unless that is `/` (an
/// idmapped clone of the whole tree) or there is a single path.
fn common_dir(paths: &[&str]) -> Option<PathBuf> {
    if paths.len() < 2 {
        return None;
    }
    let mut common = Path::new(paths[0]).parent()?.to_path_buf();
    for p in &paths[1..] {
        while !Path::new(p).starts_with(&common) {
            common = common.parent()?.to_path_buf();
        }
    }
    (common.components().count() > 1).then_some(common)
}

/// A private temporary directory holding the idmapped trees of one overlay mount; they
/// are detached and the directory removed on drop.
struct IdmapScratch {
    dir: PathBuf,
    attached: std::cell::RefCell<Vec<PathBuf>>,
}

/// The prefix of the scratch directories idmapped overlay mounts use in the temporary
/// directory: `.snapshot-idmap-<pid>-<salt>`.
pub const IDMAP_SCRATCH_PREFIX: &str = ".snapshot-idmap-";

/// The pid in a scratch directory's name, when the name is one.
pub fn idmap_scratch_pid(name: &str) -> Option<u32> {
    name.strip_prefix(IDMAP_SCRATCH_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Whether process `pid` is gone.
pub fn process_gone(pid: u32) -> bool {
    !Path::new("/proc").join(pid.to_string()).exists()
}

/// Takes away what a process killed during an idmapped overlay mount left in `base` (the
/// temporary directory): its scratch directories, the idmapped clones still attached
/// there (detached) and the directories (rmdir only: a clone that does not detach is the
/// image's own files). Returns how many scratch directories went.
pub fn sweep_idmap_scratch(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(idmap_scratch_pid) else {
            continue;
        };
        if !process_gone(pid) {
            continue;
        }
        let dir = e.path();
        if let Ok(inner) = std::fs::read_dir(&dir) {
            for i in inner.filter_map(|i| i.ok()) {
                let _ = rustix::mount::unmount(i.path(), UnmountFlags::DETACH);
                let _ = std::fs::remove_dir(i.path());
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => {
                log::info!("removed {} left by process {pid}", dir.display());
                n += 1;
            }
            Err(e) => log::warn!("removing {} left by process {pid}: {e}", dir.display()),
        }
    }
    n
}

impl IdmapScratch {
    fn new() -> std::io::Result<IdmapScratch> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        static SWEPT: std::sync::Once = std::sync::Once::new();
        // Not guessable ahead (the clock's nanoseconds, hashed), and a name someone else
        // holds is skipped: the temporary directory is anyone's to write in.
        let base = std::env::temp_dir();
        // Once a process: what killed processes left.
        SWEPT.call_once(|| {
            sweep_idmap_scratch(&base);
        });
        let mut last = None;
        for _ in 0..64 {
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let salt = blake3::hash(format!("{}-{n}-{nanos}", std::process::id()).as_bytes());
            let dir = base.join(format!(
                "{IDMAP_SCRATCH_PREFIX}{}-{}",
                std::process::id(),
                &salt.to_hex()[..16]
            ));
            match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(&dir)
            {
                Ok(()) => {
                    return Ok(IdmapScratch {
                        dir,
                        attached: Default::default(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("creating a scratch directory in {}: {e}", base.display()),
                    ))
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no scratch directory name is free")))
    }

    /// Attaches a read-only idmapped clone of `src` under the directory; returns where.
    fn attach(&self, src: &Path, userns: &OwnedFd) -> std::io::Result<PathBuf> {
        let at = self.dir.join(self.attached.borrow().len().to_string());
        std::fs::create_dir(&at)?;
        let tree = crate::idmount::idmapped_tree(src, userns, true, false)?;
        rustix::mount::move_mount(
            &tree,
            "",
            rustix::fs::CWD,
            &at,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
        self.attached.borrow_mut().push(at.clone());
        Ok(at)
    }
}

impl Drop for IdmapScratch {
    fn drop(&mut self) {
        // rmdir only, never a recursive delete: a tree that failed to detach is the
        // image's own files.
        for at in self.attached.borrow().iter() {
            if let Err(e) = rustix::mount::unmount(at, UnmountFlags::DETACH) {
                log::warn!("detaching idmapped layer {}: {e}", at.display());
            }
        }
        let n = self.attached.borrow().len();
        for i in 0..=n {
            let _ = std::fs::remove_dir(self.dir.join(i.to_string()));
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            log::warn!("removing {}: {e}", self.dir.display());
        }
    }
}

/// Whether the filesystem holding `path` takes idmapped mounts (what `uidmap=`/`gidmap=`
/// options need of a snapshot's layers): probed with an identity-mapped clone of `path`,
/// made and dropped, which changes nothing.
///
/// # Errors
/// The OS error: EINVAL where the filesystem (or the kernel, before 5.12) cannot idmap,
/// EPERM without CAP_SYS_ADMIN.
pub fn idmapped_mounts_on(path: &Path) -> std::io::Result<()> {
    crate::idmount::can_idmap(path)
}

/// Whether this kernel's overlay takes `lowerdir+` through `fsconfig` (Linux 6.8+).
///
/// Probes without side effects: a `lowerdir+` of a missing path is ENOENT on kernels that
/// know the key, EINVAL on 6.5 to 6.7, and accepted (checked only at create) before 6.5.
/// The answer is kept for the process (the probe costs more than a mount); a kernel
/// without overlay loaded yet is asked again next time.
pub fn overlay_supports_lowerdir_plus() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(known) = PROBED.get() {
        return *known;
    }
    let Ok(fs) = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) else {
        return false;
    };
    let plus = matches!(
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", "/nonexistent-snapshot-probe"),
        Err(Errno::NOENT)
    );
    *PROBED.get_or_init(|| plus)
}

/// Overlay data options split into the layers and the rest.
struct OverlayParts<'a> {
    lower: Vec<&'a str>,
    upper: Option<&'a str>,
    work: Option<&'a str>,
    other: Vec<&'a str>,
}

fn overlay_parts(data: &[String]) -> OverlayParts<'_> {
    let mut p = OverlayParts {
        lower: vec![],
        upper: None,
        work: None,
        other: vec![],
    };
    for o in data {
        if let Some(v) = o.strip_prefix("lowerdir=") {
            p.lower = v.split(':').filter(|s| !s.is_empty()).collect();
        } else if let Some(v) = o.strip_prefix("upperdir=") {
            p.upper = Some(v);
        } else if let Some(v) = o.strip_prefix("workdir=") {
            p.work = Some(v);
        } else {
            p.other.push(o);
        }
    }
    p
}

fn mount_overlay(m: &Mount, target: &Path, parsed: &ParsedOptions) -> Result<()> {
    let parts = overlay_parts(&parsed.data);
    // Paths over 255 bytes only pass through fsconfig as descriptors, which overlay takes
    // from Linux 6.13; between 6.8 and 6.12 such stacks go through mount(2) instead.
    let long_path = parts
        .lower
        .iter()
        .chain(parts.upper.iter())
        .chain(parts.work.iter())
        .any(|p| p.len() > FSCONFIG_VALUE_MAX);
    if overlay_supports_lowerdir_plus() && (!long_path || kernel_at_least(6, 13)) {
        return mount_overlay_fsconfig(m, target, parsed.flags, &parts);
    }
    legacy_overlay(m, target, parsed)
}

/// True if the running kernel's release is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    running_kernel().is_some_and(|v| v >= (major, minor))
}

fn open_path(p: &str) -> std::io::Result<OwnedFd> {
    rustix::fs::open(
        p,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

fn mount_overlay_fsconfig(
    m: &Mount,
    target: &Path,
    flags: MountFlags,
    parts: &OverlayParts<'_>,
) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        Error::unknown(format!("mount overlay at {} ({what})", target.display())).with_source(e)
    };
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| fail("fsopen", e.into()))?;
    // The source only names the mount in /proc/self/mountinfo, as mount(2)'s does.
    if !m.source.is_empty() {
        rustix::mount::fsconfig_set_string(&fs, "source", m.source.as_str())
            .map_err(|e| fail("source", e.into()))?;
    }
    let set_path = |key: &str, value: &str| -> std::io::Result<()> {
        if value.len() <= FSCONFIG_VALUE_MAX {
            rustix::mount::fsconfig_set_string(&fs, key, value)?;
        } else {
            // Values over 255 bytes only fit as a descriptor (Linux 6.13+ for overlay).
            rustix::mount::fsconfig_set_fd(&fs, key, open_path(value)?)?;
        }
        Ok(())
    };
    for l in &parts.lower {
        set_path("lowerdir+", l).map_err(|e| fail(&format!("lowerdir+ {l}"), e))?;
    }
    if let Some(u) = parts.upper {
        set_path("upperdir", u).map_err(|e| fail(&format!("upperdir {u}"), e))?;
    }
    if let Some(w) = parts.work {
        set_path("workdir", w).map_err(|e| fail(&format!("workdir {w}"), e))?;
    }
    for o in &parts.other {
        let r = match o.split_once('=') {
            Some((k, v)) => rustix::mount::fsconfig_set_string(&fs, k, v),
            None => rustix::mount::fsconfig_set_flag(&fs, *o),
        };
        r.map_err(|e| fail(&format!("option {o}"), e.into()))?;
    }
    // Superblock flags travel in the filesystem context, mount flags as attributes.
    for (flag, key) in [
        (MountFlags::RDONLY, "ro"),
        (MountFlags::SYNCHRONOUS, "sync"),
        (MountFlags::DIRSYNC, "dirsync"),
    ] {
        if flags.contains(flag) {
            rustix::mount::fsconfig_set_flag(&fs, key).map_err(|e| fail(key, e.into()))?;
        }
    }
    rustix::mount::fsconfig_create(&fs).map_err(|e| fail("create", e.into()))?;
    let mut attrs = MountAttrFlags::empty();
    for (flag, attr) in [
        (MountFlags::RDONLY, MountAttrFlags::MOUNT_ATTR_RDONLY),
        (MountFlags::NOSUID, MountAttrFlags::MOUNT_ATTR_NOSUID),
        (MountFlags::NODEV, MountAttrFlags::MOUNT_ATTR_NODEV),
        (MountFlags::NOEXEC, MountAttrFlags::MOUNT_ATTR_NOEXEC),
        (MountFlags::NOATIME, MountAttrFlags::MOUNT_ATTR_NOATIME),
        (
            MountFlags::STRICTATIME,
            MountAttrFlags::MOUNT_ATTR_STRICTATIME,
        ),
        (
            MountFlags::NODIRATIME,
            MountAttrFlags::MOUNT_ATTR_NODIRATIME,
        ),
    ] {
        if flags.contains(flag) {
            attrs |= attr;
        }
    }
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| fail("fsmount", e.into()))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| mount_err(m, target, e))
}

/// Mounts one overlay with the legacy mount(2) call alone, never the new mount API: the
/// route [`mount_all`] takes on kernels without `lowerdir+` (before Linux 6.8).
///
/// mount(2) takes one page of options. From a page minus 512 bytes on (containerd's
/// threshold), the layer paths are rewritten relative to their common directory
/// ([`relative_overlay_data`]) and mounted from a thread whose working directory is that
/// directory, so the process's working directory never changes.
///
/// # Errors
/// InvalidArgument when `m` is not an overlay, or when the option string is longer than
/// [`LEGACY_OPTIONS_MAX`] bytes even with relative paths: the kernel would cut it and could
/// mount a truncated stack of layers. Unknown with the OS error when the mount fails.
pub fn mount_overlay_legacy(m: &Mount, target: &Path) -> Result<()> {
    if m.kind != "overlay" {
        return Err(Error::invalid_argument(format!(
            "mount {} {:?} at {}: not an overlay mount",
            m.kind,
            m.source,
            target.display()
        )));
    }
    legacy_overlay(m, target, &parse_options(&m.options))
}

fn legacy_overlay(m: &Mount, target: &Path, parsed: &ParsedOptions) -> Result<()> {
    let data = parsed.data.join(",");
    let page = rustix::param::page_size();
    let max = LEGACY_OPTIONS_MAX.min(page - 1);
    if data.len() >= page.saturating_sub(512) {
        if let Some((dir, relative)) = relative_overlay_data(&parsed.data) {
            if relative.len() <= max {
                return mount_overlay_from(m, target, parsed.flags, &dir, relative);
            }
        }
    }
    if data.len() > max {
        return Err(too_long(m, target, data.len(), max));
    }
    let c = CString::new(data).map_err(|_| nul(m))?;
    rustix::mount::mount(m.source.as_str(), target, "overlay", parsed.flags, &*c)
        .map_err(|e| mount_err(m, target, e))
}

/// mount(2) of an overlay whose layer paths are relative to `dir`, from a thread that has
/// its own working directory.
fn mount_overlay_from(
    m: &Mount,
    target: &Path,
    flags: MountFlags,
    dir: &Path,
    relative: String,
) -> Result<()> {
    let c = CString::new(relative).map_err(|_| nul(m))?;
    let target = std::path::absolute(target).map_err(|e| Error::io("resolve", target, e))?;
    let res = std::thread::scope(|s| {
        s.spawn(|| -> std::result::Result<(), Errno> {
            unshare_fs()?;
            rustix::process::chdir(dir)?;
            rustix::mount::mount(m.source.as_str(), &target, "overlay", flags, &*c)
        })
        .join()
        .unwrap_or(Err(Errno::IO))
    });
    res.map_err(|e| mount_err(m, &target, e))
}

/// Gives the calling thread its own working directory (`unshare(CLONE_FS)`).
///
/// The crate's `unsafe` mount helper: `CLONE_FS` only unshares the cwd, root and umask,
/// never the descriptor table, which is what makes `unshare` unsafe in rustix.
fn unshare_fs() -> std::result::Result<(), Errno> {
    // SAFETY: see the function comment; the thread exits right after its one mount.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
}

/// Rewrites `upperdir`, `workdir` and `lowerdir` relative to the parent of their longest
/// common directory prefix, as containerd does; `None` when they share none.
pub fn relative_overlay_data(data: &[String]) -> Option<(PathBuf, String)> {
    let parts = overlay_parts(data);
    let mut dirs: Vec<&str> = parts.lower.clone();
    dirs.extend(parts.upper);
    dirs.extend(parts.work);
    let first = Path::new(dirs.first()?);
    let mut common: PathBuf = first.to_path_buf();
    for d in &dirs[1..] {
        while !Path::new(d).starts_with(&common) {
            if !common.pop() {
                return None;
            }
        }
    }
    // containerd takes path.Dir of the common prefix so that every layer keeps a name.
    if dirs.iter().any(|d| Path::new(d) == common) {
        common.pop();
    }
    if common.as_os_str().is_empty() || common == Path::new("/") {
        return None;
    }
    let rel = |d: &str| -> String {
        Path::new(d)
            .strip_prefix(&common)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap()
    };
    let mut out: Vec<String> = Vec::with_capacity(data.len());
    for o in data {
        if let Some(v) = o.strip_prefix("lowerdir=") {
            let l: Vec<String> = v.split(':').filter(|s| !s.is_empty()).map(rel).collect();
            out.push(format!("lowerdir={}", l.join(":")));
        } else if let Some(v) = o.strip_prefix("upperdir=") {
            out.push(format!("upperdir={}", rel(v)));
        } else if let Some(v) = o.strip_prefix("workdir=") {
            out.push(format!("workdir={}", rel(v)));
        } else {
            out.push(o.clone());
        }
    }
    Some((common, out.join(",")))
}

fn nul(m: &Mount) -> Error {
    Error::invalid_argument(format!("mount options {:?} hold a NUL byte", m.options))
}

fn too_long(m: &Mount, target: &Path, len: usize, max: usize) -> Error {
    Error::invalid_argument(format!(
        "mount {} at {}: the option string is {len} bytes, relative layer paths included, \
         more than the {max} mount(2) takes whole (the kernel would cut it and mount a truncated \
         stack): use fewer layers, shorter paths, or a kernel with lowerdir+ (Linux 6.8+)",
        m.kind,
        target.display()
    ))
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The device (`major:minor`, the third field).
    pub dev: String,
    /// The directory of the filesystem mounted there (the fourth field: `/` for a whole
    /// filesystem, the bound directory for a bind mount or the subvolume's path on btrfs).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type (`overlay`, `btrfs`, ...).
    pub fs_type: String,
    /// The mount source (the block device for btrfs, "overlay" for overlays).
    pub source: String,
    /// The per-mount options (the sixth field: `ro`, `nosuid`, ...).
    pub options: Vec<String>,
    /// The filesystem's options (the last field: overlay's `lowerdir=`, `upperdir=`, ...).
    pub super_options: Vec<String>,
}

/// Parses `/proc/self/mountinfo` text, in mount order; octal escapes (`\040` for a
/// space) are decoded.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let dev = l.nth(2)?;
            let root = l.next()?;
            let mount_point = l.next()?;
            let options = l.next()?;
            let mut r = right.split(' ');
            let fs_type = r.next()?;
            let source = r.next()?;
            let super_options = r.next().unwrap_or("");
            Some(MountEntry {
                dev: dev.to_string(),
                root: PathBuf::from(unescape_mountinfo(root)),
                mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
                fs_type: fs_type.to_string(),
                source: unescape_mountinfo(source),
                options: options.split(',').map(str::to_string).collect(),
                // Split before unescaping: the kernel writes a comma inside an option
                // (in an overlay's path) as `\054`.
                super_options: super_options
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(unescape_mountinfo)
                    .collect(),
            })
        })
        .collect()
}

/// The mounts of this process, from `/proc/self/mountinfo`.
///
/// # Errors
/// Unknown when `/proc/self/mountinfo` cannot be read (`/proc` not mounted).
pub fn mountinfo() -> Result<Vec<MountEntry>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    Ok(parse_mountinfo(&text))
}

/// The mount holding `path` (canonical): the last entry with the longest mount point that
/// is an ancestor of `path`, since later mounts shadow earlier ones.
pub fn mount_of<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let mut best: Option<&MountEntry> = None;
    for e in entries {
        if path.starts_with(&e.mount_point)
            && best
                .is_none_or(|b| e.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len())
        {
            best = Some(e);
        }
    }
    best
}

/// Undoes mountinfo's octal escapes of space, tab, newline and backslash (`\ooo`).
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(major, minor)` of a kernel release string such as `6.18.44-fc`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// `(major, minor)` of the running kernel.
pub fn running_kernel() -> Option<(u32, u32)> {
    kernel_version(&rustix::system::uname().release().to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kernel_version_compare() {
        assert!(kernel_at_least(0, 0));
        assert!(!kernel_at_least(u32::MAX, 0));
    }

    #[test]
    fn option_parsing() {
        let p = parse_options(&s(&["ro", "rbind"]));
        assert_eq!(
            p.flags,
            MountFlags::RDONLY | MountFlags::BIND | MountFlags::REC
        );
        assert!(p.data.is_empty());
        let p = parse_options(&s(&["rw", "index=off", "lowerdir=/a:/b", "nosuid"]));
        assert_eq!(p.flags, MountFlags::NOSUID);
        assert_eq!(p.data, s(&["index=off", "lowerdir=/a:/b"]));
        let p = parse_options(&s(&["ro", "rw"]));
        assert_eq!(p.flags, MountFlags::empty());
        let p = parse_options(&s(&["subvolid=256", "ro"]));
        assert_eq!(p.data, s(&["subvolid=256"]));
        // containerd's table: later words win, "defaults" is nothing, unknown words are data.
        let p = parse_options(&s(&["defaults", "mand", "nosuid", "suid", "sync", "async"]));
        assert_eq!(p.flags, MountFlags::PERMIT_MANDATORY_FILE_LOCKING);
        assert!(p.data.is_empty());
        let p = parse_options(&s(&[
            "mand",
            "nomand",
            "noatime",
            "strictatime",
            "userxattr",
        ]));
        assert_eq!(p.flags, MountFlags::NOATIME | MountFlags::STRICTATIME);
        assert_eq!(p.data, s(&["userxattr"]));
        let p = parse_options(&s(&["nodev", "dev", "noexec", "exec", "dirsync", "bind"]));
        assert_eq!(p.flags, MountFlags::DIRSYNC | MountFlags::BIND);
    }

    #[test]
    fn relative_lowerdirs() {
        let data = s(&[
            "index=off",
            "workdir=/var/lib/s/snapshots/3/work",
            "upperdir=/var/lib/s/snapshots/3/fs",
            "lowerdir=/var/lib/s/snapshots/2/fs:/var/lib/s/snapshots/1/fs",
        ]);
        let (dir, rel) = relative_overlay_data(&data).unwrap();
        assert_eq!(dir, Path::new("/var/lib/s/snapshots"));
        assert_eq!(
            rel,
            "index=off,workdir=3/work,upperdir=3/fs,lowerdir=2/fs:1/fs"
        );
        assert!(relative_overlay_data(&s(&["lowerdir=/a/x:/b/y"])).is_none());
    }
}
