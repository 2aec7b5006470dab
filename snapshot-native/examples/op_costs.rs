//! Median latency and durability syscalls of Prepare, Commit, View and Remove on the
//! native backend, durable and with `no_sync`, in a directory you choose (use a
//! loop-mounted filesystem: a benchmark says which filesystem it ran on).
//!
//! ```sh
//! cargo run --release -p snapshot-native --example op_costs -- DIR [N]
//! strace -f -c -e trace=fsync,fdatasync,syncfs,sync_file_range \
//!     target/release/examples/op_costs DIR 200
//! ```
//!
//! Each of N rounds prepares a parentless snapshot, writes one small file, commits it,
//! views it and removes both.
use std::path::Path;
use std::time::{Duration, Instant};

use snapshot_core::{CommitOptions, CreateOptions, Snapshotter};
use snapshot_native::{NativeConfig, NativeSnapshotter};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(root: &Path, no_sync: bool, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let config = NativeConfig {
        no_sync,
        ..NativeConfig::default()
    };
    let sn = NativeSnapshotter::open(root, config)?;
    let opts = CreateOptions::default();
    let mut t: [Vec<Duration>; 4] = Default::default();
    for i in 0..n {
        let (key, name, view) = (format!("a{i}"), format!("c{i}"), format!("v{i}"));
        let s = Instant::now();
        let m = sn.prepare(&key, "", &opts)?;
        t[0].push(s.elapsed());
        std::fs::write(Path::new(&m[0].source).join("f"), b"x")?;
        let s = Instant::now();
        sn.commit(&name, &key, &CommitOptions::default())?;
        t[1].push(s.elapsed());
        let s = Instant::now();
        sn.view(&view, &name, &opts)?;
        t[2].push(s.elapsed());
        sn.remove(&view)?;
        let s = Instant::now();
        sn.remove(&name)?;
        t[3].push(s.elapsed());
    }
    sn.close()?;
    let [p, c, v, r] = &mut t;
    println!(
        "{}: median prepare {:?}, commit {:?}, view {:?}, remove {:?} ({n} rounds)",
        if no_sync { "no_sync" } else { "durable" },
        median(p),
        median(c),
        median(v),
        median(r)
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: op_costs DIR [N]")?;
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let no_sync_only = std::env::var_os("OP_COSTS_ONLY").is_some_and(|v| v == "no_sync");
    let durable_only = std::env::var_os("OP_COSTS_ONLY").is_some_and(|v| v == "durable");
    let base = Path::new(&dir);
    if !no_sync_only {
        run(&base.join("durable"), false, n)?;
    }
    if !durable_only {
        run(&base.join("no-sync"), true, n)?;
    }
    Ok(())
}
