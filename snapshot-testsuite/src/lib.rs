//! The conformance suite every snapshot backend runs.
//!
//! It ports every case of containerd's `SnapshotterSuite` (containerd 1.6,
//! `snapshots/testsuite/testsuite.go` and `issues.go`) and adds what containerd does not
//! test: every error kind of the contract, restart persistence, concurrency, isolation
//! between snapshots, that removal frees the files, and hostile keys.
//!
//! # Running the suite for a backend
//!
//! Implement [`Harness`] (how to open your snapshotter on an empty directory) and stamp
//! out the tests in the backend's `tests/suite.rs`:
//!
//! ```ignore
//! use std::path::Path;
//! use snapshot_testsuite::{Harness, snapshotter_suite};
//!
//! struct Native;
//!
//! impl Harness for Native {
//!     fn name(&self) -> &str {
//!         "native"
//!     }
//!     fn open(&self, root: &Path) -> snapshot_core::Result<Box<dyn snapshot_core::Snapshotter>> {
//!         Ok(Box::new(snapshot_native::NativeSnapshotter::new(root)?))
//!     }
//! }
//!
//! fn snapshot_native_harness() -> Native {
//!     Native
//! }
//!
//! snapshotter_suite!(native, snapshot_native_harness());
//! ```
//!
//! [`snapshotter_suite!`] makes `mod native` with one `#[test]` per case of [`CASES`]
//! (`native::basic`, `native::walk`, ...), so `cargo test -p snapshot-native native::walk`
//! runs one case and each case reports on its own line. The harness expression is
//! evaluated once per test.
//!
//! # What each case gets
//!
//! A fresh temporary directory under [`Harness::temp_base`] holding `root/` (given to
//! [`Harness::open`]) and `work/` (mount points and scratch trees), both mode 0777. The
//! process umask is 0, as in containerd's suite, so modes in the cases are exact. Every
//! snapshot is created with the label `containerd.io/gc.root=<RFC3339 time>`, as
//! containerd's suite does. After the case, the snapshotter is closed, any mount left
//! under the temporary directory is taken off (and the case fails: a case must unmount
//! what it mounts, which [`MountGuard`] does even when the case panics),
//! [`Harness::teardown`] runs, and the directory is removed.
//!
//! # Privileged cases
//!
//! Cases that mount are privileged (see [`privileged`]): with `SNAPSHOT_TEST_PRIVILEGED`
//! unset they print `skipped: <backend>::<case>: needs SNAPSHOT_TEST_PRIVILEGED=1 and root`
//! and pass; with it set to `1` they run, and fail when the process is not root or
//! [`Harness::check_available`] says the backend cannot run here. The other cases (error
//! kinds, stat, update, walk, restart metadata, concurrency, hostile keys) run everywhere.
//!
//! # Backend differences
//!
//! [`Capabilities`] states what a backend legitimately does differently: deferred removal
//! (the files go in [`Cleaner::cleanup`](snapshot_core::Cleaner::cleanup)) and renaming
//! lower directories (overlay without `redirect_dir=on` refuses it with EXDEV, and the
//! `rename` case then asserts exactly that).
#![warn(missing_docs)]

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

use snapshot_core::{ErrorKind, Mount, Snapshotter};

pub mod cases;
pub mod fstest;
pub mod powercut;
pub mod privileged;
pub mod rng;

pub use cases::{Case, CASES};

/// What a backend legitimately does differently; the cases adapt their assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Remove leaves the files until `Cleaner::cleanup` (overlay async mode).
    pub deferred_remove: bool,
    /// Renaming a directory that comes from a lower layer works (overlay needs redirect_dir=on).
    pub rename_lower_dir: bool,
    /// Commit may give a parentless snapshot a parent (containerd 2.2's rebase): only where
    /// a layer is a diff (overlay). Without it, such a Commit must fail NotImplemented and
    /// change nothing.
    pub rebase: bool,
}

impl Default for Capabilities {
    /// Removal is immediate, lower directories can be renamed, no rebase.
    fn default() -> Self {
        Capabilities {
            deferred_remove: false,
            rename_lower_dir: true,
            rebase: false,
        }
    }
}

/// How the suite makes and disposes of a backend's snapshotter.
///
/// Only [`name`](Self::name) and [`open`](Self::open) are required.
/// [`snapshotter_suite!`] evaluates the harness expression once per test, so a harness
/// may hold per-test state (a loop device, a mounted image) and release it in `Drop`.
pub trait Harness: Send + Sync {
    /// The backend's name, used in skip lines and temporary directory names.
    fn name(&self) -> &str;

    /// Where each case makes its temp dir; None = std::env::temp_dir(). btrfs returns its mounted image.
    fn temp_base(&self) -> Option<PathBuf> {
        None
    }

    /// Ok when the harness can run here; an error (its message the reason) makes privileged cases fail (when SNAPSHOT_TEST_PRIVILEGED=1) or skip (unset).
    ///
    /// Unprivileged cases consult it too: a backend that cannot open at all here (no
    /// kernel module, no image) skips them when privileged runs are off and fails them
    /// when they are on.
    fn check_available(&self) -> snapshot_core::Result<()> {
        Ok(())
    }

    /// Opens a snapshotter on `root` (empty the first time; the same root again for restart tests).
    ///
    /// # Errors
    /// Whatever the backend's constructor returns; the case then fails with it.
    fn open(&self, root: &Path) -> snapshot_core::Result<Box<dyn Snapshotter>>;

    /// What the backend does differently from the default; see [`Capabilities`].
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Called after each case, after the snapshotter is closed.
    fn teardown(&self, _root: &Path) {}
}

impl<T: Harness + ?Sized> Harness for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn temp_base(&self) -> Option<PathBuf> {
        (**self).temp_base()
    }
    fn check_available(&self) -> snapshot_core::Result<()> {
        (**self).check_available()
    }
    fn open(&self, root: &Path) -> snapshot_core::Result<Box<dyn Snapshotter>> {
        (**self).open(root)
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn teardown(&self, root: &Path) {
        (**self).teardown(root)
    }
}

/// Stamps out one #[test] per case inside `mod $name`, so `cargo test -p snapshot-native native::walk` runs one case.
///
/// `$harness` is an expression whose value implements [`Harness`]; it is evaluated once
/// per test, in the scope of the invoking module (the generated module does
/// `use super::*`). The module also holds `CASE_NAMES`, the cases it stamped out.
#[macro_export]
macro_rules! snapshotter_suite {
    ($name:ident, $harness:expr) => {
        $crate::__snapshotter_suite_cases!(
            $name, $harness;
            basic,
            stat_active,
            stat_committed,
            transitivity,
            prepare_view_failing,
            update,
            remove,
            walk,
            layer_file_update,
            remove_directory_in_lower_layer,
            chown,
            directory_permission_on_commit,
            remove_intermediate_snapshot,
            deleted_files_in_child_snapshot,
            move_file_from_lower_layer,
            rename,
            view_readonly,
            stat_in_walk,
            close_twice,
            root_permission,
            layers_128_mount,
            errors_not_found,
            commit_rebase,
            unpack_labels,
            errors_already_exists,
            errors_failed_precondition,
            errors_invalid_argument,
            errors_unavailable_after_close,
            root_lock,
            long_key_messages,
            restart_persistence,
            restart_mounts,
            concurrent_prepare_commit,
            concurrent_same_key,
            concurrent_commit_same_name,
            isolation,
            remove_frees_files,
            hostile_keys,
            fsck_finds_every_fault,
            max_size_is_enforced_or_refused,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __snapshotter_suite_cases {
    ($name:ident, $harness:expr; $($case:ident),* $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            /// The cases stamped out in this module, in suite order.
            #[allow(dead_code)]
            pub const CASE_NAMES: &[&str] = &[$(stringify!($case)),*];

            $(
                #[test]
                fn $case() {
                    let harness = $harness;
                    $crate::run_case(&harness, stringify!($case));
                }
            )*
        }
    };
}

/// Runs the case named `case` (one of [`CASES`]) against `harness`: gates it, makes its
/// directories, runs it, and cleans up. [`snapshotter_suite!`] calls this.
///
/// # Panics
/// When the case fails, when it leaves a mount behind, when `case` is unknown, and when a
/// privileged run is requested but impossible (see [`privileged`]).
pub fn run_case(harness: &dyn Harness, case: &str) {
    let c = CASES.iter().find(|c| c.name == case).unwrap_or_else(|| {
        panic!(
            "unknown case {case:?}: the suite has {:?}",
            CASES.iter().map(|c| c.name).collect::<Vec<_>>()
        )
    });
    let test = format!("{}::{}", harness.name(), case);
    if c.privileged && !privileged::require_privileged(&test) {
        return;
    }
    if let Err(reason) = harness.check_available() {
        if !privileged::unavailable(&test, &reason.to_string()) {
            return;
        }
    }
    clear_umask();
    let mut ctx = Ctx::new(harness, test);
    let outcome = catch_unwind(AssertUnwindSafe(|| (c.run)(&mut ctx)));
    let problems = ctx.finish();
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
    if !problems.is_empty() {
        panic!("{}: {}", ctx.test, problems.join("; "));
    }
}

/// Sets the umask to 0 once per process, as containerd's suite does. It is never
/// restored: cases run in parallel threads and the umask is process-wide.
fn clear_umask() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        rustix::process::umask(rustix::fs::Mode::empty());
    });
}

/// What a running case works with: the snapshotter, its `root/` and the `work/` area.
pub struct Ctx<'h> {
    harness: &'h dyn Harness,
    test: String,
    tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    work: PathBuf,
    sn: Option<Box<dyn Snapshotter>>,
}

impl<'h> Ctx<'h> {
    fn new(harness: &'h dyn Harness, test: String) -> Ctx<'h> {
        let base = harness.temp_base().unwrap_or_else(std::env::temp_dir);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("snapshot-suite-{}-", dir_safe(harness.name())))
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("{test}: creating a temp dir in {}: {e}", base.display()));
        let root = tmp.path().join("root");
        let work = tmp.path().join("work");
        for d in [&root, &work] {
            std::fs::create_dir_all(d)
                .unwrap_or_else(|e| panic!("{test}: mkdir {}: {e}", d.display()));
        }
        let sn = harness.open(&root).unwrap_or_else(|e| {
            panic!(
                "{test}: failed to open the snapshotter on {}: {e}",
                root.display()
            )
        });
        Ctx {
            harness,
            test,
            tmp: Some(tmp),
            root,
            work,
            sn: Some(sn),
        }
    }

    /// The snapshotter under test.
    pub fn sn(&self) -> &dyn Snapshotter {
        self.sn.as_deref().expect("the snapshotter is open")
    }

    /// `<backend>::<case>`, for messages.
    pub fn test(&self) -> &str {
        &self.test
    }

    /// The snapshotter's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The case's play area for mount points and scratch trees.
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// The temporary directory holding `root/` and `work/`.
    pub fn tmp(&self) -> &Path {
        self.tmp
            .as_ref()
            .expect("the temp dir exists during the case")
            .path()
    }

    /// The backend's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.harness.capabilities()
    }

    /// The harness.
    pub fn harness(&self) -> &dyn Harness {
        self.harness
    }

    /// Closes the snapshotter and opens a new one on the same root (a restart).
    ///
    /// # Panics
    /// When close or open fails.
    pub fn reopen(&mut self) {
        if let Some(sn) = self.sn.take() {
            sn.close()
                .unwrap_or_else(|e| panic!("{}: close before reopening: {e}", self.test));
        }
        // A process another test forks holds a copy of the closed store's lock file (and
        // so its lock) until it execs: a short wait, never an error.
        let start = std::time::Instant::now();
        let sn = loop {
            match self.harness.open(&self.root) {
                Err(e) if e.kind() == ErrorKind::Unavailable && start.elapsed().as_secs() < 10 => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => {
                    break r.unwrap_or_else(|e| {
                        panic!("{}: reopening {}: {e}", self.test, self.root.display())
                    })
                }
            }
        };
        self.sn = Some(sn);
    }

    /// Mounts `mounts` at `target` (created if missing) and returns a guard that unmounts
    /// it when dropped.
    ///
    /// # Panics
    /// When the directory cannot be made or the mount fails.
    pub fn mount(&self, mounts: &[Mount], target: &Path) -> MountGuard {
        std::fs::create_dir_all(target)
            .unwrap_or_else(|e| panic!("{}: mkdir {}: {e}", self.test, target.display()));
        assert!(
            !mounts.is_empty(),
            "{}: expected mounts to have entries",
            self.test
        );
        snapshot_core::mount::mount_all(mounts, target).unwrap_or_else(|e| {
            panic!(
                "{}: mount {mounts:?} at {}: {e}",
                self.test,
                target.display()
            )
        });
        MountGuard {
            target: target.to_path_buf(),
            mounted: true,
        }
    }

    /// Closes the snapshotter, takes off leftover mounts, runs the teardown and removes
    /// the directory. Returns what went wrong.
    fn finish(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(sn) = self.sn.take() {
            if let Err(e) = sn.close() {
                problems.push(format!("close after the case: {e}"));
            }
        }
        let Some(tmp) = self.tmp.take() else {
            return problems;
        };
        for m in mounts_under(tmp.path()).into_iter().rev() {
            problems.push(format!("{} was left mounted", m.display()));
            if let Err(e) = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH) {
                problems.push(format!("detaching {}: {e}", m.display()));
            }
        }
        self.harness.teardown(&self.root);
        let path = tmp.path().to_path_buf();
        if let Err(e) = tmp.close() {
            eprintln!("{}: removing {}: {e}", self.test, path.display());
        }
        problems
    }
}

/// `name` with every character but ASCII letters, digits, `-` and `_` replaced by `-`,
/// so a harness name like "overlay (async)" makes a plain directory name.
fn dir_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// What [`fill_as_container`] did.
#[derive(Debug)]
pub struct Fill {
    /// The file's size when the writer stopped.
    pub written: u64,
    /// What the writer printed when a write failed (`None`: it wrote everything).
    pub error: Option<String>,
}

impl Fill {
    /// Whether the writer stopped on ENOSPC or EDQUOT.
    pub fn full(&self) -> bool {
        self.error.as_deref().is_some_and(|e| {
            e.contains("No space left on device") || e.contains("Disk quota exceeded")
        })
    }

    /// The errno name of [`full`](Self::full)'s error.
    pub fn errno(&self) -> &'static str {
        match &self.error {
            Some(e) if e.contains("Disk quota exceeded") => "EDQUOT",
            Some(e) if e.contains("No space left on device") => "ENOSPC",
            Some(_) => "another error",
            None => "none",
        }
    }
}

/// Writes zeros into a new file at `path` in 4 KiB blocks, up to `max` bytes and synced,
/// as a container's process would: `dd` started without CAP_SYS_RESOURCE (containerd's
/// default capabilities leave it out; with it, the kernel lets root past quota limits on
/// ext4). Uses util-linux's `setpriv`.
///
/// # Panics
/// When `setpriv` or `dd` cannot be started.
pub fn fill_as_container(path: &Path, max: u64) -> Fill {
    let out = std::process::Command::new("setpriv")
        .args([
            "--bounding-set",
            "-sys_resource",
            "--",
            "dd",
            "if=/dev/zero",
        ])
        .arg(format!("of={}", path.display()))
        .args(["bs=4096", "conv=fsync", "status=none"])
        .arg(format!("count={}", max.div_ceil(4096)))
        .output()
        .unwrap_or_else(|e| panic!("setpriv (util-linux) ... dd: {e}"));
    let written = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Fill {
        written,
        error: (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// Mount points at or below `dir`, in mount order, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    snapshot_core::mount::mountinfo()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// A mount made by [`Ctx::mount`]; unmounts when dropped, also while a failing case
/// unwinds, so no case leaves a mount behind.
pub struct MountGuard {
    target: PathBuf,
    mounted: bool,
}

impl MountGuard {
    /// Mounts `mounts` at `target` (which must exist) outside a suite case.
    ///
    /// # Errors
    /// When the mount fails.
    pub fn mount(mounts: &[Mount], target: &Path) -> snapshot_core::Result<MountGuard> {
        snapshot_core::mount::mount_all(mounts, target)?;
        Ok(MountGuard {
            target: target.to_path_buf(),
            mounted: true,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts now (containerd's suite unmounts before committing).
    ///
    /// # Panics
    /// When the unmount fails (EBUSY: something still uses the mount).
    pub fn unmount(mut self) {
        self.mounted = false;
        snapshot_core::mount::unmount_all(&self.target)
            .unwrap_or_else(|e| panic!("unmount {}: {e}", self.target.display()));
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted && snapshot_core::mount::unmount_all(&self.target).is_err() {
            // Lazy detach: the mount disappears once its last user is gone.
            let _ = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// The initial metastore map size to open a backend with for [`grow_a_tiny_map`]: far
/// too small for what that function records.
pub const TINY_MAP: usize = 64 << 10;

/// Prepares, commits and removes a chain of 100 layers with 3 KB labels on a backend
/// opened with a [`TINY_MAP`] metastore, so the map must grow several times during
/// Prepare, Commit and Remove. Every call must succeed the first time: a transaction never
/// runs twice, so no backend sees "map full" or a retried closure.
///
/// # Panics
/// When a call fails or the store is left inconsistent.
pub fn grow_a_tiny_map(sn: &dyn Snapshotter) {
    use snapshot_core::{CommitOptions, CreateOptions, Labels};
    let big = "v".repeat(3000);
    let mut parent = String::new();
    for i in 0..100 {
        let name = format!("layer-{i}");
        let key = format!("{name}-active");
        let labels: Labels = [(format!("label-{i}"), big.clone())].into_iter().collect();
        sn.prepare(&key, &parent, &CreateOptions { labels })
            .unwrap_or_else(|e| panic!("prepare {key} while the map grows: {e}"));
        let labels: Labels = [(format!("commit-{i}"), big.clone())].into_iter().collect();
        sn.commit(
            &name,
            &key,
            &CommitOptions {
                labels,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("commit {name} while the map grows: {e}"));
        parent = name;
    }
    sn.view("view", &parent, &CreateOptions::default())
        .unwrap_or_else(|e| panic!("view while the map grows: {e}"));
    sn.remove("view").expect("remove view");
    for i in (0..100).rev() {
        sn.remove(&format!("layer-{i}"))
            .unwrap_or_else(|e| panic!("remove layer-{i} while the map grows: {e}"));
    }
    let mut left = 0;
    sn.walk(&[], &mut |_| {
        left += 1;
        Ok(())
    })
    .expect("walk");
    assert_eq!(left, 0, "every layer was removed");
}
