//! Builds a two-layer image and a container snapshot on it, and prints the mounts.
//!
//! `cargo run -p snapshot-overlay --example overlay -- /tmp/overlay-demo` (no root needed:
//! it writes the layers' files straight into their directories and mounts nothing).

use snapshot_core::{Cleaner, CommitOptions, CreateOptions, Snapshotter};
use snapshot_overlay::{OverlayConfig, OverlaySnapshotter};

fn main() -> snapshot_core::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/overlay-demo".into());
    let sn = OverlaySnapshotter::open(root.as_ref(), OverlayConfig::default())?;
    println!("kernel: {:?}", sn.features());
    let none = CreateOptions::default();
    let mut parent = String::new();
    for layer in ["base", "app"] {
        let key = format!("extract-{layer}");
        sn.prepare(&key, &parent, &none)?;
        let upper = sn.upper_dir(&key)?;
        std::fs::write(upper.join(layer), format!("from {layer}\n"))
            .map_err(|e| snapshot_core::Error::io("write", &upper, e))?;
        sn.commit(layer, &key, &CommitOptions::default())?;
        println!("{layer}: {:?}", sn.usage(layer)?);
        parent = layer.to_string();
    }
    for m in sn.prepare("container", "app", &none)? {
        println!(
            "mount -t {} {} -o {} <target>",
            m.kind,
            m.source,
            m.options.join(",")
        );
    }
    for key in ["container", "app", "base"] {
        sn.remove(key)?;
    }
    sn.cleanup()?;
    sn.close()
}
