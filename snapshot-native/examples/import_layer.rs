//! Imports two layers into a native snapshotter, inspects the result through a view, and
//! removes everything again.
//!
//! ```sh
//! cargo run -p snapshot-native --example import_layer [ROOT]
//! ```
//!
//! ROOT defaults to a fresh temporary directory. The steps are what an image unpacker
//! does: prepare a snapshot, mount it, write the layer's files through the mount, unmount,
//! commit; then the next layer on top of the first; then a read-only view of the top.
//!
//! Mounting needs root (CAP_SYS_ADMIN). Run without it, the example does every
//! snapshotter call the same way but writes and reads through the snapshot's directory
//! instead of a mount: for the native backend the bind mount's source *is* that
//! directory, so the content is the same, only the read-only protection of the view mount
//! is not exercised. It says which way it went.
use std::path::{Path, PathBuf};

use snapshot_core::mount::{mount_all, unmount_all};
use snapshot_core::{CommitOptions, CreateOptions, Mount, Snapshotter};
use snapshot_native::{NativeConfig, NativeSnapshotter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("root"));
    let target = tmp.path().join("mnt");
    std::fs::create_dir(&target)?;
    let root_user = rustix::process::geteuid().is_root();
    if !root_user {
        println!(
            "not root: mounting needs CAP_SYS_ADMIN, so files go through the snapshot directories"
        );
    }
    let sn = NativeSnapshotter::open(&root, NativeConfig::default())?;
    let opts = CreateOptions::default();

    let mounts = sn.prepare("extract-layer-1", "", &opts)?;
    println!("prepare extract-layer-1: {mounts:?}");
    with_tree(&mounts, &target, root_user, |dir| {
        std::fs::create_dir(dir.join("etc"))?;
        std::fs::write(dir.join("etc/hello"), b"from the first layer\n")
    })?;
    sn.commit("layer-1", "extract-layer-1", &CommitOptions::default())?;
    println!("commit layer-1: usage {:?}", sn.usage("layer-1")?);

    let mounts = sn.prepare("extract-layer-2", "layer-1", &opts)?;
    println!("prepare extract-layer-2 on layer-1 (a copy of layer-1): {mounts:?}");
    with_tree(&mounts, &target, root_user, |dir| {
        std::fs::remove_file(dir.join("etc/hello"))?;
        std::fs::write(dir.join("etc/motd"), b"from the second layer\n")
    })?;
    sn.commit("layer-2", "extract-layer-2", &CommitOptions::default())?;

    let mounts = sn.view("inspect", "layer-2", &opts)?;
    println!("view inspect of layer-2 (a read-only bind of layer-2): {mounts:?}");
    with_tree(&mounts, &target, root_user, |dir| {
        let motd = std::fs::read_to_string(dir.join("etc/motd"))?;
        println!(
            "  etc/motd: {motd:?}; etc/hello exists: {}",
            dir.join("etc/hello").exists()
        );
        if root_user {
            let denied = std::fs::write(dir.join("etc/x"), b"").is_err();
            println!("  writing through the view is refused: {denied}");
        }
        Ok(())
    })?;
    let first =
        std::fs::read_to_string(Path::new(&sn.mounts("inspect")?[0].source).join("etc/motd"))?;
    assert_eq!(first, "from the second layer\n");

    for key in ["inspect", "layer-2", "layer-1"] {
        sn.remove(key)?;
        println!("remove {key}");
    }
    let mut left = 0;
    sn.walk(&[], &mut |_| {
        left += 1;
        Ok(())
    })?;
    println!("snapshots left: {left}");
    sn.close()?;
    Ok(())
}

/// Runs `f` on the snapshot's tree: mounted at `target` as root, else its directory (the
/// source of its single bind mount).
fn with_tree(
    mounts: &[Mount],
    target: &Path,
    mount: bool,
    f: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), Box<dyn std::error::Error>> {
    if !mount {
        return Ok(f(Path::new(&mounts[0].source))?);
    }
    mount_all(mounts, target)?;
    let res = f(target);
    unmount_all(target)?;
    Ok(res?)
}
