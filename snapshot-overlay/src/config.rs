//! The options of the overlay snapshotter.

/// The label that reports where a snapshot's upper directory (its own layer) lives, when
/// [`OverlayConfig::upperdir_label`] is on. It is added to what Stat, Walk and Update
/// return and never stored.
pub const UPPERDIR_LABEL: &str = "containerd.io/snapshot/overlay.upperdir";

/// The label that asks for a `volatile` overlay mount of an active snapshot (any value but
/// `false`). Volatile mounts skip every sync to the upper directory: faster, but after a
/// crash of the machine the layer's content is undefined, so use it only for scratch
/// containers. The option is left out on kernels without it (before Linux 5.10). The kernel
/// marks the work directory at the first volatile mount and refuses to mount the layer
/// again until `<id>/work/work/incompat/volatile` is deleted: label only snapshots that are
/// mounted once.
pub const VOLATILE_LABEL: &str = "containerd.io/snapshot/overlay.volatile";

/// Options of [`OverlaySnapshotter::open`](crate::OverlaySnapshotter::open).
///
/// The default matches containerd's `overlayfs` plugin: asynchronous remove, no upperdir
/// label, no extra options, `redirect_dir` off, durable metastore commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayConfig {
    /// The options every backend takes (durability, `sync`, remove mode, map size). Remove
    /// is asynchronous unless `options.async_remove` is `Some(false)`: Remove drops the
    /// metadata and leaves the directory for
    /// [`Cleaner::cleanup`](snapshot_core::Cleaner::cleanup), as containerd's plugin does.
    pub options: snapshot_core::lifecycle::Options,
    /// Report [`UPPERDIR_LABEL`] on Stat, Walk and Update (containerd's `upperdir_label`).
    pub upperdir_label: bool,
    /// Extra options appended to every overlay mount after `lowerdir=` (containerd 2.x's
    /// `mount_options`); never added to bind mounts.
    pub mount_options: Vec<String>,
    /// Add `redirect_dir=on` to overlay mounts, so renaming a directory that comes from a
    /// lower layer works instead of failing with EXDEV. Off by default, as in containerd:
    /// tools that read upper directories directly (differs) do not understand redirects.
    /// The kernel refuses it together with `userxattr`, so opening fails when both apply.
    pub redirect_dir: bool,
    /// Force `userxattr` on or off; `None` detects it as containerd does (on when the
    /// process runs in a user namespace that is not the initial one, off on tmpfs).
    pub userxattr: Option<bool>,
}
