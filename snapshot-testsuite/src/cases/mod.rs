//! The cases of the suite, as plain functions over a [`Ctx`], and the helpers they share.
//!
//! [`CASES`] lists every case with whether it mounts (privileged). The first 21 port
//! containerd's `SnapshotterSuite` one to one (`containerd` module); the rest test what
//! containerd's suite does not (`extra` module). Each function panics with a message
//! naming the key and what differed when the backend is wrong.

use std::fmt::{Debug, Display};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use snapshot_core::keyspace::GC_ROOT_LABEL;
use snapshot_core::{labels, CommitOptions, CreateOptions, Error, ErrorKind, Mount, Result};

use crate::fstest::{self, Applier};
use crate::Ctx;

mod containerd;
mod extra;

/// One case of the suite.
#[derive(Clone, Copy)]
pub struct Case {
    /// The test name the macro stamps out (`basic`, `layers_128_mount`, ...).
    pub name: &'static str,
    /// True when the case mounts, so it needs root and `SNAPSHOT_TEST_PRIVILEGED=1`.
    pub privileged: bool,
    /// The case itself; it panics on failure.
    pub run: fn(&mut Ctx<'_>),
}

impl Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("privileged", &self.privileged)
            .finish()
    }
}

const fn case(name: &'static str, privileged: bool, run: fn(&mut Ctx<'_>)) -> Case {
    Case {
        name,
        privileged,
        run,
    }
}

/// Every case, in suite order: containerd's 21, then the additions.
pub static CASES: &[Case] = &[
    // containerd's SnapshotterSuite (testsuite.go:45-76)
    case("basic", true, containerd::basic),
    case("stat_active", true, containerd::stat_active),
    case("stat_committed", true, containerd::stat_committed),
    case("transitivity", true, containerd::transitivity),
    case(
        "prepare_view_failing",
        true,
        containerd::prepare_view_failing,
    ),
    case("update", false, containerd::update),
    case("remove", false, containerd::remove),
    case("walk", false, containerd::walk),
    case("layer_file_update", true, containerd::layer_file_update),
    case(
        "remove_directory_in_lower_layer",
        true,
        containerd::remove_directory_in_lower_layer,
    ),
    case("chown", true, containerd::chown),
    case(
        "directory_permission_on_commit",
        true,
        containerd::directory_permission_on_commit,
    ),
    case(
        "remove_intermediate_snapshot",
        true,
        containerd::remove_intermediate_snapshot,
    ),
    case(
        "deleted_files_in_child_snapshot",
        true,
        containerd::deleted_files_in_child_snapshot,
    ),
    case(
        "move_file_from_lower_layer",
        true,
        containerd::move_file_from_lower_layer,
    ),
    case("rename", true, containerd::rename),
    case("view_readonly", true, containerd::view_readonly),
    case("stat_in_walk", false, containerd::stat_in_walk),
    case("close_twice", false, containerd::close_twice),
    case("root_permission", true, containerd::root_permission),
    case("layers_128_mount", true, containerd::layers_128_mount),
    // Beyond containerd's suite.
    case("errors_not_found", false, extra::errors_not_found),
    case("commit_rebase", false, extra::commit_rebase),
    case("unpack_labels", false, extra::unpack_labels),
    case("errors_already_exists", false, extra::errors_already_exists),
    case(
        "errors_failed_precondition",
        false,
        extra::errors_failed_precondition,
    ),
    case(
        "errors_invalid_argument",
        false,
        extra::errors_invalid_argument,
    ),
    case(
        "errors_unavailable_after_close",
        false,
        extra::errors_unavailable_after_close,
    ),
    case("root_lock", false, extra::root_lock),
    case("long_key_messages", false, extra::long_key_messages),
    case("restart_persistence", false, extra::restart_persistence),
    case("restart_mounts", true, extra::restart_mounts),
    case(
        "concurrent_prepare_commit",
        false,
        extra::concurrent_prepare_commit,
    ),
    case("concurrent_same_key", false, extra::concurrent_same_key),
    case(
        "concurrent_commit_same_name",
        false,
        extra::concurrent_commit_same_name,
    ),
    case("isolation", true, extra::isolation),
    case("remove_frees_files", true, extra::remove_frees_files),
    case("hostile_keys", false, extra::hostile_keys),
    case(
        "fsck_finds_every_fault",
        true,
        extra::fsck_finds_every_fault,
    ),
    case(
        "max_size_is_enforced_or_refused",
        false,
        extra::max_size_is_enforced_or_refused,
    ),
];

/// The time of the `containerd.io/gc.root` label, fixed once per process like
/// containerd's package-level `opt`.
pub fn gc_root_time() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| rfc3339(SystemTime::now()))
}

/// `t` as RFC 3339 in UTC with whole seconds (Go's `time.RFC3339`), e.g.
/// `2026-12-01T21:58:21Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The options every snapshot of the suite is created with: the gc.root label.
pub fn opt() -> CreateOptions {
    CreateOptions::with_labels(labels([(GC_ROOT_LABEL, gc_root_time())]))
}

/// The commit options of the suite: the gc.root label.
pub fn commit_opt() -> CommitOptions {
    CommitOptions::with_labels(labels([(GC_ROOT_LABEL, gc_root_time())]))
}

/// A unique suffix for snapshot names within the process.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", N.fetch_add(1, Ordering::Relaxed))
}

/// Unwraps a result or panics with `what` and the error.
pub(crate) trait OrFail<T> {
    fn or_fail(self, what: impl Display) -> T;
}

impl<T, E: Display> OrFail<T> for std::result::Result<T, E> {
    fn or_fail(self, what: impl Display) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Asserts that `res` failed with `kind` and returns the error.
pub(crate) fn expect_err<T: Debug>(res: Result<T>, kind: ErrorKind, what: impl Display) -> Error {
    match res {
        Ok(v) => panic!("{what}: expected a {kind:?} error, got Ok({v:?})"),
        Err(e) if e.kind() == kind => e,
        Err(e) => panic!("{what}: expected a {kind:?} error, got {:?}: {e}", e.kind()),
    }
}

/// Like [`expect_err`], and the message must name `key` (truncated keys count by their
/// first 64 bytes).
pub(crate) fn expect_err_naming<T: Debug>(
    res: Result<T>,
    kind: ErrorKind,
    key: &str,
    what: impl Display,
) -> Error {
    let e = expect_err(res, kind, &what);
    let mut end = key.len().min(64);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    let shown = &key[..end];
    let msg = e.to_string();
    assert!(
        msg.contains(shown),
        "{what}: the error message must name {key:?}, got {msg:?}"
    );
    e
}

/// `work/<name>` as a string: containerd's suite uses such absolute paths as keys.
pub(crate) fn work_key(ctx: &Ctx<'_>, name: &str) -> String {
    ctx.work().join(name).to_string_lossy().into_owned()
}

/// containerd's `snapshotterPrepareMount`: prepares the key `work/<name>` on `parent` and
/// mounts it at that same path.
pub(crate) fn prepare_mount(
    ctx: &Ctx<'_>,
    name: &str,
    parent: &str,
) -> (String, crate::MountGuard) {
    let key = work_key(ctx, name);
    let mounts = ctx
        .sn()
        .prepare(&key, parent, &opt())
        .or_fail(format!("prepare {key:?} on {parent:?}"));
    assert!(
        !mounts.is_empty(),
        "prepare {key:?}: expected mounts to have entries"
    );
    let guard = ctx.mount(&mounts, Path::new(&key));
    (key, guard)
}

/// containerd's `applyToMounts`: mounts `mounts` on a scratch dir in `work/`, applies.
pub(crate) fn apply_to_mounts(ctx: &Ctx<'_>, mounts: &[Mount], a: &Applier) {
    let td = scratch(ctx, "prepare");
    let guard = ctx.mount(mounts, td.path());
    a.apply(guard.path()).or_fail("apply to the prepared mount");
    guard.unmount();
}

/// A scratch directory under `work/`, removed when dropped.
pub(crate) fn scratch(ctx: &Ctx<'_>, prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(ctx.work())
        .or_fail(format!("temp dir in {}", ctx.work().display()))
}

/// containerd's `createSnapshot`: prepares on `parent`, applies `a`, commits; returns
/// the committed name.
pub(crate) fn create_snapshot(ctx: &Ctx<'_>, parent: &str, a: &Applier) -> String {
    let name = unique("layer");
    let prepare = format!("{name}-prepare");
    let m = ctx
        .sn()
        .prepare(&prepare, parent, &opt())
        .or_fail(format!("prepare {prepare:?}"));
    apply_to_mounts(ctx, &m, a);
    ctx.sn()
        .commit(&name, &prepare, &commit_opt())
        .or_fail(format!("commit {prepare:?} as {name:?}"));
    name
}

/// containerd's `checkSnapshot`: a view of `name`, mounted, must equal the tree `check`.
pub(crate) fn check_snapshot(ctx: &Ctx<'_>, name: &str, check: &Path) {
    let td = scratch(ctx, "check");
    let view = format!("{name}-view");
    let m = ctx
        .sn()
        .view(&view, name, &opt())
        .or_fail(format!("view {view:?} of {name:?}"));
    {
        let guard = ctx.mount(&m, td.path());
        if let Err(d) = fstest::check_directory_equal(check, guard.path()) {
            panic!("view of {name:?} differs from the applied layers: {d}");
        }
        guard.unmount();
    }
    ctx.sn()
        .remove(&view)
        .or_fail(format!("remove view {view:?}"));
}

/// containerd's `checkSnapshots`: builds a chain, one committed snapshot per applier, and
/// checks after each that a view equals the same appliers applied to a plain directory.
pub(crate) fn check_snapshots(ctx: &Ctx<'_>, appliers: &[Applier]) -> String {
    let flat = scratch(ctx, "flat");
    let mut parent = String::new();
    for (i, a) in appliers.iter().enumerate() {
        let s = create_snapshot(ctx, &parent, a);
        a.apply(flat.path())
            .or_fail(format!("apply layer {} to the check directory", i + 1));
        check_snapshot(ctx, &s, flat.path());
        parent = s;
    }
    parent
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_764_626_301)),
            "2025-12-01T21:58:21Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<_> = CASES.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
    }
}
