//! A simulated power cut: the backend runs on a filesystem in a loop-mounted image, and
//! the image file is copied right after the calls return, with no sync first. The copy
//! holds what the filesystem had sent to its block device; mounting it replays the
//! journal as after a real power cut. Whatever the calls acknowledged must be in it.
//!
//! ```no_run
//! use snapshot_testsuite::powercut::{power_cut, Fs};
//! # fn open(root: &std::path::Path) -> snapshot_core::Result<Box<dyn snapshot_core::Snapshotter>> { todo!() }
//! if snapshot_testsuite::privileged::require_privileged_with_tools("powercut", &["mkfs.ext4"]) {
//!     power_cut(Fs::Ext4, &|root| open(root));
//! }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use snapshot_core::{CommitOptions, CreateOptions, ErrorKind, Kind, Mount, Snapshotter};

/// A filesystem to run the power cut on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    /// ext4 with its journal (mkfs.ext4's defaults).
    Ext4,
    /// ext4 without a journal: nothing reaches the device but what is flushed, so a
    /// flush shows in the device's write counter.
    Ext4NoJournal,
    /// btrfs.
    Btrfs,
    /// xfs.
    Xfs,
}

impl Fs {
    /// The mkfs tool the filesystem needs.
    pub fn mkfs(self) -> &'static str {
        match self {
            Fs::Ext4 | Fs::Ext4NoJournal => "mkfs.ext4",
            Fs::Btrfs => "mkfs.btrfs",
            Fs::Xfs => "mkfs.xfs",
        }
    }
}

/// Opens a backend on a root.
pub type Opener<'a> = &'a dyn Fn(&Path) -> snapshot_core::Result<Box<dyn Snapshotter>>;

/// How many more active snapshots [`power_cut`] makes before the cut.
const ACTIVES: usize = 24;

/// Runs Prepare, Commit, View and Remove on a fresh `fs` image, copies the image right
/// after the last call returned, and checks on the copy that every acknowledged call is
/// there: the committed layer, the active and view snapshots with every directory their
/// mounts name, the removed snapshot gone, and a Prepare on the committed layer works.
///
/// # Panics
/// When a step fails or the copy lost an acknowledged call.
pub fn power_cut(fs: Fs, open: Opener<'_>) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let image = Image::new(tmp.path(), "live", fs);
    let mnt = image.mount(&tmp.path().join("mnt"));
    let root = mnt.join("root");
    let sn = open(&root).unwrap_or_else(|e| panic!("open on {fs:?}: {e}"));
    let opts = CreateOptions::default();
    sn.prepare("base-a", "", &opts).expect("prepare base-a");
    sn.commit("base", "base-a", &CommitOptions::default())
        .expect("commit base");
    sn.prepare("active", "base", &opts).expect("prepare active");
    // Enough creates that a store making trees ahead (the shared lifecycle's blank trees,
    // made in the background after the first create) hands some of them out.
    for i in 0..ACTIVES {
        let parent = if i % 2 == 0 { "" } else { "base" };
        sn.prepare(&format!("active-{i}"), parent, &opts)
            .unwrap_or_else(|e| panic!("prepare active-{i}: {e}"));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    sn.prepare("committed-a", "base", &opts)
        .expect("prepare committed-a");
    sn.commit("committed", "committed-a", &CommitOptions::default())
        .expect("commit committed");
    sn.view("view", "committed", &opts).expect("view");
    sn.prepare("removed", "", &opts).expect("prepare removed");
    sn.remove("removed").expect("remove");
    let mnt = cut_and_mount(tmp.path(), image, mnt, sn);
    let root = mnt.join("root");
    let sn = open(&root).unwrap_or_else(|e| panic!("open after the power cut on {fs:?}: {e}"));
    for (key, kind) in [
        ("base", Kind::Committed),
        ("committed", Kind::Committed),
        ("active", Kind::Active),
        ("view", Kind::View),
    ] {
        let info = sn
            .stat(key)
            .unwrap_or_else(|e| panic!("{fs:?}: {key} lost in the power cut: {e}"));
        assert_eq!(info.kind, kind, "{fs:?}: {key}");
    }
    assert_eq!(
        sn.stat("removed").map(drop).unwrap_err().kind(),
        ErrorKind::NotFound,
        "{fs:?}: an acknowledged remove came back"
    );
    let actives: Vec<String> = (0..ACTIVES).map(|i| format!("active-{i}")).collect();
    for key in ["active", "view"]
        .into_iter()
        .chain(actives.iter().map(String::as_str))
    {
        let mounts = sn
            .mounts(key)
            .unwrap_or_else(|e| panic!("{fs:?}: mounts of {key} after the power cut: {e}"));
        for p in mount_paths(&mounts) {
            assert!(
                p.is_dir(),
                "{fs:?}: {key}'s mount names {}, lost in the power cut",
                p.display()
            );
        }
    }
    let mounts = sn
        .prepare("after", "committed", &opts)
        .unwrap_or_else(|e| panic!("{fs:?}: prepare on a layer committed before the cut: {e}"));
    for p in mount_paths(&mounts) {
        assert!(p.is_dir(), "{fs:?}: {} missing", p.display());
    }
    sn.close().expect("close");
}

/// For a backend whose Prepare copies its parent (native): a power cut right after a
/// Prepare on a parent returned keeps the copy's file contents, not only its names. The
/// parent's layer has a 1 MiB file (committed without `sync`, so only the Prepare can have
/// made the copy durable); after the cut, the child's copy must hold all of it.
///
/// # Panics
/// When a step fails or the copy lost data.
pub fn power_cut_keeps_copied_data(fs: Fs, open: Opener<'_>, layer_dir: LayerDir<'_>) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let image = Image::new(tmp.path(), "live", fs);
    let mnt = image.mount(&tmp.path().join("mnt"));
    let root = mnt.join("root");
    let sn = open(&root).unwrap_or_else(|e| panic!("open on {fs:?}: {e}"));
    let opts = CreateOptions::default();
    let data: Vec<u8> = (0..1 << 20)
        .map(|i: usize| (i * 13 + i / 511) as u8)
        .collect();
    let m = sn.prepare("base-a", "", &opts).expect("prepare base-a");
    std::fs::write(layer_dir(&root, &m).join("data"), &data).expect("write the layer");
    sn.commit("base", "base-a", &CommitOptions::default())
        .expect("commit base");
    let m = sn.prepare("child", "base", &opts).expect("prepare child");
    let child = layer_dir(&root, &m)
        .strip_prefix(&*mnt)
        .expect("the child is under the mount")
        .to_path_buf();
    let mnt = cut_and_mount(tmp.path(), image, mnt, sn);
    let sn = open(&mnt.join("root")).expect("open after the power cut");
    assert!(sn.stat("child").is_ok(), "{fs:?}: the child is lost");
    let got = std::fs::read(mnt.join(&child).join("data")).unwrap_or_default();
    assert!(
        got == data,
        "{fs:?}: the child's copy of the parent's file has {} of its {} bytes after the cut",
        got.len(),
        data.len()
    );
    sn.close().expect("close");
}

/// A power cut right after Prepares on a parent whose layer belongs to a user keeps the
/// owner each new layer took from it (overlay's upper directory takes its parent's owner,
/// as containerd's does). The parent's layer is chowned to 1000:1000 before its commit;
/// [`ACTIVES`] children are prepared on it (enough that a store making trees ahead hands
/// out some it made before the parent existed), then the image is cut; after the cut every
/// child's writable directory must still belong to 1000:1000.
///
/// # Panics
/// When a step fails or the copy lost an owner.
pub fn power_cut_keeps_the_parents_owner(fs: Fs, open: Opener<'_>, layer_dir: LayerDir<'_>) {
    use std::os::unix::fs::MetadataExt;
    const OWNER: u32 = 1000;
    let tmp = tempfile::tempdir().expect("temp dir");
    let image = Image::new(tmp.path(), "live", fs);
    let mnt = image.mount(&tmp.path().join("mnt"));
    let root = mnt.join("root");
    let sn = open(&root).unwrap_or_else(|e| panic!("open on {fs:?}: {e}"));
    let opts = CreateOptions::default();
    let m = sn.prepare("base-a", "", &opts).expect("prepare base-a");
    let base = layer_dir(&root, &m);
    std::os::unix::fs::chown(&base, Some(OWNER), Some(OWNER)).expect("chown the layer");
    sn.commit("base", "base-a", &CommitOptions::default())
        .expect("commit base");
    let mut children = Vec::new();
    for i in 0..ACTIVES {
        let key = format!("child-{i}");
        let m = sn
            .prepare(&key, "base", &opts)
            .unwrap_or_else(|e| panic!("prepare {key}: {e}"));
        let dir = layer_dir(&root, &m);
        let owner = std::fs::metadata(&dir).map(|md| (md.uid(), md.gid()));
        assert_eq!(
            owner.ok(),
            Some((OWNER, OWNER)),
            "{fs:?}: {key} before the cut"
        );
        let rel = dir
            .strip_prefix(&*mnt)
            .expect("under the mount")
            .to_path_buf();
        children.push((key, rel));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mnt = cut_and_mount(tmp.path(), image, mnt, sn);
    let sn = open(&mnt.join("root")).expect("open after the power cut");
    for (key, rel) in &children {
        assert!(sn.stat(key).is_ok(), "{fs:?}: {key} lost in the power cut");
        let md = std::fs::metadata(mnt.join(rel))
            .unwrap_or_else(|e| panic!("{fs:?}: {key}'s directory after the cut: {e}"));
        assert_eq!(
            (md.uid(), md.gid()),
            (OWNER, OWNER),
            "{fs:?}: {key}'s layer lost its parent's owner in the power cut"
        );
    }
    sn.close().expect("close");
}

/// Opens a backend on a root with the `sync` option on or off.
pub type SyncOpener<'a> = &'a dyn Fn(&Path, bool) -> snapshot_core::Result<Box<dyn Snapshotter>>;

/// Finds the writable directory of an active snapshot from its root and mounts.
pub type LayerDir<'a> = &'a dyn Fn(&Path, &[Mount]) -> PathBuf;

/// The writable directory of a bind (native) or overlay (its `upperdir=`) mount list.
pub fn writable_dir(_root: &Path, mounts: &[Mount]) -> PathBuf {
    for m in mounts {
        for o in &m.options {
            if let Some(v) = o.strip_prefix("upperdir=") {
                return PathBuf::from(v);
            }
        }
        if m.kind == "bind" {
            return PathBuf::from(&m.source);
        }
    }
    panic!("no writable directory in {mounts:?}")
}

/// Checks that the `sync` option makes a layer's files durable when Commit returns: on a
/// fresh `fs` image, 8 MiB are written into an active snapshot's directory (not through a
/// mount, whose unmount would flush), then it is committed, and the loop device's
/// written-sectors counter must have grown by the data's size during the Commit. With
/// `unsynced_stays_cached`, the same Commit without `sync` must leave most of it unwritten
/// (the page cache still holds it); a backend whose commit flushes anyway (btrfs
/// snapshots do) passes false. Returns the bytes written during each Commit (without,
/// with `sync`).
///
/// # Panics
/// When a step fails or the counter does not show the flag's effect.
pub fn sync_flushes_the_layer(
    fs: Fs,
    open: SyncOpener<'_>,
    layer_dir: LayerDir<'_>,
    unsynced_stays_cached: bool,
) -> (u64, u64) {
    const DATA: usize = 8 << 20;
    let tmp = tempfile::tempdir().expect("temp dir");
    let image = Image::new(tmp.path(), "sync", fs);
    let mnt = image.mount(&tmp.path().join("mnt"));
    let mut written = [0u64; 2];
    for (i, sync) in [false, true].into_iter().enumerate() {
        let root = mnt.join(format!("root-{sync}"));
        let sn = open(&root, sync).unwrap_or_else(|e| panic!("open on {fs:?}: {e}"));
        let mounts = sn
            .prepare("a", "", &CreateOptions::default())
            .expect("prepare a");
        let dir = layer_dir(&root, &mounts);
        let data: Vec<u8> = (0..DATA).map(|i| (i * 31 + i / 4093) as u8).collect();
        std::fs::write(dir.join("big"), &data).expect("write the layer");
        let before = mnt.sectors_written();
        sn.commit("c", "a", &CommitOptions::default())
            .expect("commit");
        written[i] = (mnt.sectors_written() - before) * 512;
        sn.close().expect("close");
    }
    let [without, with] = written;
    assert!(
        with >= DATA as u64,
        "{fs:?}: with sync, Commit wrote {with} bytes to the device, less than the layer's {DATA}"
    );
    if unsynced_stays_cached {
        assert!(
            without < DATA as u64 / 2,
            "{fs:?}: without sync, Commit wrote {without} bytes: the flag made no difference"
        );
    }
    (without, with)
}

/// The directories a mount list names: bind sources and overlay's upper, work and lower
/// directories.
fn mount_paths(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        if m.kind == "bind" {
            out.push(PathBuf::from(&m.source));
        }
        for o in &m.options {
            if let Some(v) = o
                .strip_prefix("upperdir=")
                .or_else(|| o.strip_prefix("workdir="))
            {
                out.push(PathBuf::from(v));
            } else if let Some(v) = o.strip_prefix("lowerdir=") {
                out.extend(v.split(':').map(PathBuf::from));
            }
        }
    }
    out
}

/// A sparse image file holding a filesystem.
struct Image {
    path: PathBuf,
    fs: Fs,
}

impl Image {
    fn new(dir: &Path, name: &str, fs: Fs) -> Image {
        let path = dir.join(format!("{name}.img"));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(512 << 20))
            .expect("image file");
        let mut mkfs = Command::new(fs.mkfs());
        match fs {
            Fs::Ext4 => mkfs.args(["-q", "-F"]),
            Fs::Ext4NoJournal => mkfs.args(["-q", "-F", "-O", "^has_journal"]),
            Fs::Btrfs | Fs::Xfs => mkfs.args(["-q", "-f"]),
        };
        let st = mkfs.arg(&path).status().expect("mkfs");
        assert!(st.success(), "{} failed", fs.mkfs());
        Image { path, fs }
    }

    /// The power cut: a copy (`<dir>/copy.img`) of the image as the block device holds it
    /// now, with no sync first.
    fn cut(&self, dir: &Path) -> Image {
        let copy = dir.join("copy.img");
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&self.path)
            .arg(&copy)
            .status()
            .expect("cp");
        assert!(st.success(), "copying the image failed");
        Image {
            path: copy,
            fs: self.fs,
        }
    }

    fn mount(&self, target: &Path) -> Mounted {
        std::fs::create_dir_all(target).expect("mount point");
        // mount(8) attaches the loop device with autoclear: the unmount frees it, so no
        // device outlives the test even when a step in between fails.
        let options = match self.fs {
            // The copy has the original's UUID, which xfs refuses twice unless told.
            Fs::Xfs => "loop,nouuid",
            _ => "loop",
        };
        let st = Command::new("mount")
            .args(["-o", options])
            .arg(&self.path)
            .arg(target)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mounting {} at {} failed",
            self.path.display(),
            target.display()
        );
        let out = Command::new("losetup")
            .arg("-j")
            .arg(&self.path)
            .output()
            .expect("losetup");
        let listing = String::from_utf8_lossy(&out.stdout);
        let dev = listing
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        Mounted {
            target: target.to_path_buf(),
            dev,
        }
    }
}

/// A loop-mounted image; unmounted on drop, which frees the loop device.
/// Cuts the power under `sn` (see [`Image::cut`]), then closes it and unmounts the live
/// image; mounts the copy at `<dir>/mnt-copy`.
fn cut_and_mount(dir: &Path, image: Image, mnt: Mounted, sn: Box<dyn Snapshotter>) -> Mounted {
    let after = image.cut(dir);
    let _ = sn.close();
    drop(sn);
    drop(mnt);
    drop(image);
    after.mount(&dir.join("mnt-copy"))
}

struct Mounted {
    target: PathBuf,
    dev: String,
}

impl Mounted {
    /// Sectors written to the loop device so far (`/sys/block/<dev>/stat`, field 7).
    fn sectors_written(&self) -> u64 {
        let name = Path::new(&self.dev)
            .file_name()
            .expect("loop device name")
            .to_string_lossy()
            .into_owned();
        let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat"))
            .expect("loop device statistics");
        stat.split_whitespace()
            .nth(6)
            .and_then(|v| v.parse().ok())
            .expect("written sectors in the loop device statistics")
    }
}

impl std::ops::Deref for Mounted {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.target
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.target)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy: detach it from the tree now; the kernel lets it (and the loop device)
            // go once the last user closes it.
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
        }
    }
}
