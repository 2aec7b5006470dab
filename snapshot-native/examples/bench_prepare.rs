//! Measures a native Prepare of a 20,000-file parent on a loop-mounted btrfs or xfs image
//! (reflinks on), median of 3 runs.
//!
//! ```sh
//! cargo run --release -p snapshot-native --example bench_prepare -- [btrfs|xfs|DIR] [FILES]
//! ```
//!
//! `btrfs` (the default) and `xfs` build a 2 GiB sparse image in a temporary directory,
//! format it (`mkfs.btrfs`, `mkfs.xfs -m reflink=1`), attach it with `losetup --find
//! --show`, mount it, and undo all of that at the end, also on failure: this needs root.
//! Any other argument is a directory to run in as is (e.g. on ext4, to see the
//! `copy_file_range` path). The parent has FILES files (default 20,000) of 4 KiB in 200
//! directories. Each run prepares a child of it (timed) and removes it (not timed).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use snapshot_core::{CommitOptions, CreateOptions, Snapshotter};
use snapshot_native::copy::copy_tree;
use snapshot_native::{NativeConfig, NativeSnapshotter};

const RUNS: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let fs_arg = args.next().unwrap_or_else(|| "btrfs".to_string());
    let files: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let tmp = tempfile::tempdir()?;
    let image = match fs_arg.as_str() {
        "btrfs" | "xfs" => Some(Image::new(&fs_arg, tmp.path())?),
        _ => None,
    };
    let base = image
        .as_ref()
        .map_or_else(|| PathBuf::from(&fs_arg), |i| i.mnt.clone());
    let root = base.join("bench-root");
    let sn = NativeSnapshotter::open(&root, NativeConfig::default())?;
    let opts = CreateOptions::default();
    let m = sn.prepare("parent-active", "", &opts)?;
    let dir = PathBuf::from(&m[0].source);
    let data = vec![0x42u8; 4096];
    for i in 0..files {
        let d = dir.join(format!("d{:03}", i % 200));
        if i < 200 {
            std::fs::create_dir(&d)?;
        }
        std::fs::write(d.join(format!("f{i}")), &data)?;
    }
    sn.commit("parent", "parent-active", &CommitOptions::default())?;
    rustix::fs::sync();

    let mut times = Vec::new();
    for run in 0..RUNS {
        let key = format!("child-{run}");
        let start = Instant::now();
        let m = sn.prepare(&key, "parent", &opts)?;
        let took = start.elapsed();
        times.push(took);
        println!("run {run}: prepare {took:?} ({})", m[0].source);
        sn.remove(&key)?;
    }
    times.sort();
    let median: Duration = times[RUNS / 2];
    // What the copy did, from a copy of the same parent outside the snapshotter.
    let probe = base.join("bench-probe");
    std::fs::create_dir(&probe)?;
    let stats = copy_tree(&dir, &probe)?;
    std::fs::remove_dir_all(&probe)?;
    println!("filesystem: {fs_arg}; files: {files}; copy: {stats:?}");
    println!("median of {RUNS}: {median:?}");
    sn.remove("parent")?;
    sn.close()?;
    drop(sn);
    drop(image);
    Ok(())
}

/// A loop-mounted image, unmounted and detached when dropped.
struct Image {
    mnt: PathBuf,
    dev: String,
}

impl Image {
    fn new(fs: &str, dir: &Path) -> Result<Image, Box<dyn std::error::Error>> {
        let img = dir.join("img");
        std::fs::File::create(&img)?.set_len(2 << 30)?;
        let img_s = img.to_str().ok_or("temporary path is not UTF-8")?;
        match fs {
            "btrfs" => run("mkfs.btrfs", &["-q", img_s])?,
            _ => run("mkfs.xfs", &["-q", "-m", "reflink=1", img_s])?,
        };
        let out = Command::new("losetup")
            .args(["--find", "--show", img_s])
            .output()?;
        if !out.status.success() {
            return Err(format!("losetup: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let dev = String::from_utf8(out.stdout)?.trim().to_string();
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt)?;
        let image = Image { mnt, dev };
        run(
            "mount",
            &[&image.dev, image.mnt.to_str().ok_or("not UTF-8")?],
        )?;
        Ok(image)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = snapshot_core::mount::unmount_all(&self.mnt);
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    let out = Command::new(cmd).args(args).output()?;
    if !out.status.success() {
        return Err(format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}
