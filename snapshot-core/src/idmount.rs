//! Idmapped mounts, as containerd 2.x's mount code makes them for `uidmap=`/`gidmap=`
//! options: a user namespace holding the mapping, then a detached clone of a tree with
//! `MOUNT_ATTR_IDMAP` set to that namespace. The crate's two `unsafe` helpers for it live
//! here: the system calls rustix does not wrap (`clone` into a new user namespace,
//! `mount_setattr`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::mount::{MountAttrFlags, OpenTreeFlags};

use crate::idmap::IdMap;

/// A user namespace whose UID and GID maps are `uid` and `gid`: a descriptor of
/// `/proc/<pid>/ns/user` of a child made in it, which is killed once the descriptor is
/// open (the namespace lives as long as the descriptor).
///
/// # Errors
/// The OS error of the clone, of writing the maps or of opening the namespace.
pub(crate) fn user_namespace(uid: &IdMap, gid: &IdMap) -> io::Result<OwnedFd> {
    let pid = spawn_in_new_user_namespace()?;
    let result = (|| {
        let proc = Path::new("/proc").join(pid.to_string());
        // The parent holds CAP_SETUID and CAP_SETGID in its own namespace: it may write
        // any mapping, and setgroups needs no denying first.
        std::fs::write(proc.join("uid_map"), map_text(uid))?;
        std::fs::write(proc.join("gid_map"), map_text(gid))?;
        let ns = std::fs::File::open(proc.join("ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    reap(pid);
    result
}

/// The `/proc/<pid>/uid_map` text of a mapping: one `container host size` line a range.
fn map_text(m: &IdMap) -> String {
    m.0.iter()
        .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
        .collect()
}

/// An idmapped, detached clone of the tree at `path` (read-only with `read_only`),
/// for `move_mount` or an overlay layer; with `recursive` (an `rbind`) the mounts below
/// `path` come along, each idmapped, else only the mount at `path` (a `bind`, an overlay
/// layer, which never shows what is mounted below it).
///
/// # Errors
/// The OS error of `open_tree` or `mount_setattr` (EINVAL where the filesystem or kernel
/// cannot idmap).
pub(crate) fn idmapped_tree(
    path: &Path,
    userns: &OwnedFd,
    read_only: bool,
    recursive: bool,
) -> io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, path, flags)?;
    let mut set = MountAttrFlags::MOUNT_ATTR_IDMAP;
    if read_only {
        set |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    set_idmap(&tree, set, userns, recursive)?;
    Ok(tree)
}

/// Whether the filesystem holding `path` takes idmapped mounts: an identity-mapped,
/// read-only, detached clone of `path` is made and dropped.
///
/// # Errors
/// The OS error of the user namespace, `open_tree` or `mount_setattr` (EINVAL where the
/// filesystem cannot be idmapped, EPERM without the privilege).
pub(crate) fn can_idmap(path: &Path) -> io::Result<()> {
    let all = IdMap::parse("identity", crate::idmap::IDENTITY)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let ns = user_namespace(&all, &all)?;
    idmapped_tree(path, &ns, true, false).map(drop)
}

/// `struct mount_attr` of `linux/mount.h`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH [| AT_RECURSIVE], {set, userns})`.
fn set_idmap(
    tree: &OwnedFd,
    set: MountAttrFlags,
    userns: &OwnedFd,
    recursive: bool,
) -> io::Result<()> {
    let mut at = libc::AT_EMPTY_PATH;
    if recursive {
        at |= libc::AT_RECURSIVE;
    }
    let attr = MountAttr {
        attr_set: u64::from(set.bits()),
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: the path is a NUL-terminated static string, `attr` is a live, properly
    // laid-out `struct mount_attr` whose size is passed, and both descriptors stay open
    // for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes a child process in a new user namespace that waits to be killed, and returns
/// its pid.
fn spawn_in_new_user_namespace() -> io::Result<libc::pid_t> {
    // SAFETY: a raw clone without a new stack behaves as fork (sharing the descriptor
    // table, CLONE_FILES): the child gets a copy of the calling thread only. It then makes nothing but async-signal-safe system calls
    // (prctl, pause, _exit) and never returns into Rust code that could take a lock
    // another thread held.
    let parent = unsafe { libc::getpid() };
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            // CLONE_FILES: the child shares the descriptor table instead of holding
            // copies of every descriptor open at this instant, which would keep other
            // threads' files (and the mounts they are in) busy while it lives.
            (libc::CLONE_NEWUSER | libc::CLONE_FILES | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; the child dies with its parent and when killed.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent died before the line above: no signal will come.
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            loop {
                libc::pause();
            }
        }
    }
    Ok(pid as libc::pid_t)
}

/// Kills and reaps the child.
fn reap(pid: libc::pid_t) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        while let Err(rustix::io::Errno::INTR) =
            rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty())
        {}
    }
}
