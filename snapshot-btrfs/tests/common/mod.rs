//! The btrfs filesystem the tests run on: the image `cargo xtask test-btrfs` mounts and
//! names in `SNAPSHOT_BTRFS_MOUNT`.

use std::path::PathBuf;

/// The variable xtask sets to the mounted image.
pub const MOUNT_ENV: &str = "SNAPSHOT_BTRFS_MOUNT";

/// The mounted btrfs image, or why there is none.
pub fn btrfs_mount() -> Result<PathBuf, String> {
    let Some(dir) = std::env::var_os(MOUNT_ENV) else {
        return Err(format!(
            "{MOUNT_ENV} is not set: run the btrfs tests with `cargo xtask test-btrfs` (as root), \
             which builds, mounts and removes a btrfs image"
        ));
    };
    let dir = PathBuf::from(dir);
    snapshot_btrfs::sys::statfs_require_btrfs(&dir).map_err(|e| {
        format!(
            "{MOUNT_ENV}={}: {e}; run `cargo xtask test-btrfs`",
            dir.display()
        )
    })?;
    Ok(dir)
}
