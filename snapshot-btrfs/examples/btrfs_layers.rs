//! Imports a layer and prepares a container on it, then prints the btrfs mounts.
//!
//! ```sh
//! sudo cargo run -p snapshot-btrfs --example btrfs_layers -- /mnt/btrfs/snapshots
//! ```
//! The directory must be on a btrfs filesystem; the example removes what it made.

use std::path::PathBuf;

use snapshot_btrfs::BtrfsSnapshotter;
use snapshot_core::{CommitOptions, CreateOptions, Snapshotter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root: PathBuf = std::env::args_os()
        .nth(1)
        .map(Into::into)
        .ok_or("usage: btrfs_layers <directory on btrfs>")?;
    let sn = BtrfsSnapshotter::open(&root)?;
    let layer = sn.prepare("extract-layer-1", "", &CreateOptions::default())?;
    println!("layer mount: {layer:?}");
    // A real importer mounts `layer` and unpacks a tarball into it; committing an empty
    // layer shows the lifecycle just as well.
    sn.commit("layer-1", "extract-layer-1", &CommitOptions::default())?;
    let container = sn.prepare("container-1", "layer-1", &CreateOptions::default())?;
    println!("container mount: {container:?}");
    let view = sn.view("inspect-1", "layer-1", &CreateOptions::default())?;
    println!("view mount: {view:?}");
    for key in ["inspect-1", "container-1", "layer-1"] {
        sn.remove(key)?;
    }
    sn.close()?;
    Ok(())
}
