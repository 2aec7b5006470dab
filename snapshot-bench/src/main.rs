//! `snapshot-bench`: the workloads of `cargo xtask bench`, run in process on one backend
//! in a root you give (xtask gives it a fresh loop-mounted filesystem), each operation
//! timed against its **floor**: the raw system work it cannot avoid, measured in the same
//! run on the same filesystem with rustix and heed directly.
//!
//! ```sh
//! snapshot-bench --root DIR [--backend native|overlay|btrfs] [--quick] [--only W,...] [--json FILE]
//! ```
//!
//! It mounts (the chain writes through the snapshot's mounts, as an unpack does), so it
//! runs as root. Prints a table (workload, operation, count, median, p99, floor, ratio)
//! and writes the same rows as JSON.

mod floors;
mod metered;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use snapshots::Backend;

/// Why the bench cannot run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad command line.
    #[error("{0}\nusage: snapshot-bench --root DIR [--backend native|overlay|btrfs] [--quick] [--only W,...] [--json FILE]")]
    Usage(String),
    /// A snapshotter call failed.
    #[error("{what}: {source}")]
    Snapshot {
        /// What the bench was doing.
        what: String,
        /// The backend's error.
        #[source]
        source: snapshots::Error,
    },
    /// A filesystem call failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the bench was doing.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The LMDB floor failed.
    #[error("LMDB floor at {}: {source}", path.display())]
    Lmdb {
        /// The floor's environment.
        path: PathBuf,
        /// heed's error.
        #[source]
        source: heed::Error,
    },
}

pub type Result<T = ()> = std::result::Result<T, BenchError>;

/// Attaches what the bench was doing to a snapshotter error.
pub trait Doing<T> {
    /// The error, saying `what` failed.
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Doing<T> for snapshots::Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BenchError::Snapshot {
            what: what(),
            source,
        })
    }
}

pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.into();
    move |source| BenchError::Io { what, path, source }
}

/// What the command line asks for.
pub struct Args {
    pub root: PathBuf,
    pub backend: Backend,
    pub quick: bool,
    pub json: Option<PathBuf>,
    /// The workloads to run (`chain`, `meta`, `store`, `big-tree`, `concurrent`,
    /// `scale`, `fsck`, `gc`); empty for all.
    pub only: Vec<String>,
}

/// The workloads `--only` can name.
pub const WORKLOADS: [&str; 9] = [
    "chain",
    "meta",
    "store",
    "big-tree",
    "concurrent",
    "scale",
    "fsck",
    "gc",
    "quota",
];

impl Args {
    /// Whether the workload `name` runs.
    pub fn runs(&self, name: &str) -> bool {
        // `quota` needs a filesystem with project quotas: only when named.
        (self.only.is_empty() && name != "quota") || self.only.iter().any(|w| w == name)
    }
}

fn parse_args() -> Result<Args> {
    let mut root = None;
    let mut backend = Backend::Overlay;
    let mut quick = false;
    let mut json = None;
    let mut only = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--root" => root = it.next().map(PathBuf::from),
            "--backend" => {
                let b = it
                    .next()
                    .ok_or_else(|| BenchError::Usage("--backend needs a name".into()))?;
                backend = b
                    .parse()
                    .map_err(|e: snapshots::Error| BenchError::Usage(e.to_string()))?;
            }
            "--quick" => quick = true,
            "--json" => json = it.next().map(PathBuf::from),
            "--only" => {
                let list = it.next().unwrap_or_default();
                for w in list.split(',') {
                    if !WORKLOADS.contains(&w) {
                        return Err(BenchError::Usage(format!(
                            "--only: unknown workload {w:?}; the workloads are {}",
                            WORKLOADS.join(", ")
                        )));
                    }
                    only.push(w.to_string());
                }
            }
            "-h" | "--help" => return Err(BenchError::Usage(String::new())),
            other => return Err(BenchError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    let root = root.ok_or_else(|| BenchError::Usage("--root is required".into()))?;
    Ok(Args {
        root,
        backend,
        quick,
        json,
        only,
    })
}

/// One line of the result.
#[derive(Debug, Clone)]
pub struct Row {
    pub via: &'static str,
    pub workload: &'static str,
    pub op: String,
    pub n: usize,
    pub median: Duration,
    pub p99: Duration,
    pub floor: Option<Duration>,
}

impl Row {
    /// A row from samples (sorted here) and the floor's median.
    pub fn new(
        workload: &'static str,
        op: impl Into<String>,
        mut samples: Vec<Duration>,
        floor: Option<Duration>,
    ) -> Row {
        samples.sort_unstable();
        let n = samples.len();
        let pick = |q: f64| samples[((n as f64 - 1.0) * q).round() as usize];
        Row {
            via: "library",
            workload,
            op: op.into(),
            n,
            median: pick(0.5),
            p99: pick(0.99),
            floor,
        }
    }

    fn ratio(&self) -> Option<f64> {
        self.floor
            .filter(|f| !f.is_zero())
            .map(|f| self.median.as_secs_f64() / f.as_secs_f64())
    }
}

fn fmt_d(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<8} {:<12} {:<40} {:>6} {:>11} {:>11} {:>11} {:>7}",
        "via", "workload", "operation", "n", "median", "p99", "floor", "ratio"
    );
    for r in rows {
        println!(
            "{:<8} {:<12} {:<40} {:>6} {:>11} {:>11} {:>11} {:>7}",
            r.via,
            r.workload,
            r.op,
            r.n,
            fmt_d(r.median),
            fmt_d(r.p99),
            r.floor.map(fmt_d).unwrap_or_else(|| "-".into()),
            r.ratio()
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
}

fn json(rows: &[Row], args: &Args, fs: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let ns = |d: Duration| d.as_nanos().to_string();
    let mut out = format!(
        "{{\"backend\":\"{}\",\"filesystem\":\"{}\",\"quick\":{},\"rows\":[",
        args.backend,
        esc(fs),
        args.quick
    );
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"via\":\"{}\",\"workload\":\"{}\",\"op\":\"{}\",\"n\":{},\"median_ns\":{},\"p99_ns\":{},\"floor_ns\":{},\"ratio\":{}}}",
            r.via,
            r.workload,
            esc(&r.op),
            r.n,
            ns(r.median),
            ns(r.p99),
            r.floor.map(ns).unwrap_or_else(|| "null".into()),
            r.ratio().map(|x| format!("{x:.3}")).unwrap_or_else(|| "null".into()),
        ));
    }
    out.push_str("]}\n");
    out
}

/// The filesystem type holding `path`, as /proc/self/mountinfo names it.
fn filesystem_of(path: &std::path::Path) -> String {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return "unknown".into();
    };
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "unknown".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in mi.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mnt), Some(fstype), Some(src)) =
            (fields.get(4), fields.get(dash + 1), fields.get(dash + 2))
        else {
            continue;
        };
        if canon.starts_with(mnt) && best.as_ref().is_none_or(|(l, _)| mnt.len() >= *l) {
            best = Some((mnt.len(), format!("{fstype} on {src} at {mnt}")));
        }
    }
    best.map(|(_, s)| s).unwrap_or_else(|| "unknown".into())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("snapshot-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("snapshot-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result {
    std::fs::create_dir_all(&args.root).map_err(io_err("create", &args.root))?;
    let fs = filesystem_of(&args.root);
    println!(
        "snapshot-bench: backend {}, {}, root {} ({})",
        args.backend,
        if args.quick { "quick" } else { "full" },
        args.root.display(),
        fs
    );
    let rows = workloads::all(args)?;
    println!();
    print_table(&rows);
    let (stores, calls) = metered::checked();
    println!(
        "\nsnapshotd's metrics matched the benchmark's own counts: {calls} calls to {stores} \
         daemons, every method's snapshotd_operations_total equal"
    );
    if let Some(path) = &args.json {
        std::fs::write(path, json(&rows, args, &fs)).map_err(io_err("write", path))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    #[test]
    fn rows_take_median_p99_and_ratio_to_floor() {
        let samples: Vec<Duration> = (1..=100).rev().map(us).collect();
        let r = Row::new("meta", "stat", samples, Some(us(25)));
        assert_eq!(r.n, 100);
        assert_eq!(r.median, us(51), "the sorted middle");
        assert_eq!(r.p99, us(99));
        assert!((r.ratio().unwrap() - 51.0 / 25.0).abs() < 1e-9);
        let none = Row::new("meta", "x", vec![us(3)], None);
        assert_eq!((none.median, none.p99, none.ratio()), (us(3), us(3), None));
        assert_eq!(
            Row::new("m", "x", vec![us(3)], Some(Duration::ZERO)).ratio(),
            None
        );
    }

    #[test]
    fn json_has_every_row_and_escapes_text() {
        let args = Args {
            root: "/r".into(),
            backend: Backend::Native,
            quick: true,
            json: None,
            only: Vec::new(),
        };
        let rows = vec![
            Row::new("chain", "prepare \"on\" parent", vec![us(10)], Some(us(5))),
            Row::new("meta", "stat", vec![us(2)], None),
        ];
        let j = json(&rows, &args, "ext4 on /dev/loop0");
        assert!(j.starts_with("{\"backend\":\"native\",\"filesystem\":\"ext4 on /dev/loop0\",\"quick\":true,\"rows\":["));
        assert!(j.contains("\"op\":\"prepare \\\"on\\\" parent\""), "{j}");
        assert!(
            j.contains("\"median_ns\":10000,\"p99_ns\":10000,\"floor_ns\":5000,\"ratio\":2.000"),
            "{j}"
        );
        assert!(j.contains("\"floor_ns\":null,\"ratio\":null"), "{j}");
        assert_eq!(j.matches("\"workload\"").count(), 2);
    }

    #[test]
    fn durations_print_in_readable_units() {
        assert_eq!(fmt_d(Duration::from_nanos(1_500)), "1.5 µs");
        assert_eq!(fmt_d(us(2_500)), "2.50 ms");
        assert_eq!(fmt_d(Duration::from_millis(3_210)), "3.21 s");
    }
}
