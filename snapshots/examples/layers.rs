//! Opens a backend by name and builds a two-layer chain, then lists it.
//!
//! ```sh
//! cargo run -p snapshots --example layers -- native /tmp/snapshots-example
//! ```
//!
//! Nothing is mounted, so it runs unprivileged with `native`; `overlay` needs a
//! filesystem that can hold overlay upper directories.

use std::path::PathBuf;

use snapshots::{labels, open, Backend, CommitOptions, CreateOptions, Options, Snapshotter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let backend: Backend = args.next().as_deref().unwrap_or("native").parse()?;
    let root = args.next().map(PathBuf::from).unwrap_or_else(|| {
        std::env::temp_dir().join(format!("snapshots-example-{}", std::process::id()))
    });

    let sn = open(backend, &root, &Options::default())?;
    println!("opened {backend} at {}", root.display());

    sn.prepare("extract-1", "", &CreateOptions::default())?;
    sn.commit(
        "layer-1",
        "extract-1",
        &CommitOptions::with_labels(labels([("layer", "1")])),
    )?;
    sn.prepare("extract-2", "layer-1", &CreateOptions::default())?;
    sn.commit(
        "layer-2",
        "extract-2",
        &CommitOptions::with_labels(labels([("layer", "2")])),
    )?;
    let mounts = sn.prepare("container", "layer-2", &CreateOptions::default())?;
    println!("container mounts: {mounts:?}");

    sn.walk(&[], &mut |info| {
        println!(
            "{:<10} {:<10} parent={:?}",
            info.name,
            info.kind.to_string(),
            info.parent
        );
        Ok(())
    })?;

    for key in ["container", "layer-2", "layer-1"] {
        sn.remove(key)?;
    }
    if let Some(cleaner) = sn.as_cleaner() {
        cleaner.cleanup()?;
    }
    sn.close()?;
    Ok(())
}
