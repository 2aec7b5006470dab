//! The daemon's configuration: command-line flags over an optional TOML file.
//!
//! The file (`/etc/snapshotd/config.toml` unless `--config` names another) holds the same
//! settings as the flags; a flag given on the command line wins over the file, the file
//! over the defaults. A missing default file is fine; a missing file named by `--config`,
//! or a file that does not parse, is an error that names the file.
//!
//! ```toml
//! backend = "overlay"            # native, overlay or btrfs; default: detected
//! root = "/var/lib/snapshotd"
//! address = "/run/snapshotd/snapshotd.sock"
//! log_level = "info"
//! no_sync = false                # skip the metastore's fsync (containerd's no_sync)
//! sync = false                   # flush a layer's data before its commit is recorded
//! namespaced = false             # namespaces and garbage collection (never behind containerd)
//!
//! [gc]                           # the collector's policy with namespaced (containerd's knobs)
//! pause_threshold = 0.02         # share of time collections may hold writers back
//! deletion_threshold = 0         # removals that start a collection at once (0: none)
//! mutation_threshold = 100       # changes that make the next interval collect
//! schedule_delay_ms = 0
//! startup_delay_ms = 100
//!
//! [overlay]
//! sync_remove = false            # delete directories at remove, not in cleanup
//! upperdir_label = false         # label snapshots with their upper directory
//! mount_options = ["nodev"]      # extra options of every overlay mount
//! redirect_dir = false           # mount with redirect_dir=on (renames of lower dirs)
//! ```

use crate::error::DaemonError;
use std::path::{Path, PathBuf};

use clap::Parser;
use log::LevelFilter;
use serde::Deserialize;
use snapshots::Backend;

/// The configuration file read when `--config` is not given; it may be missing.
pub const DEFAULT_CONFIG: &str = "/etc/snapshotd/config.toml";
/// The default root directory of the backend's store.
pub const DEFAULT_ROOT: &str = "/var/lib/snapshotd";
/// The default socket path.
pub const DEFAULT_ADDRESS: &str = "/run/snapshotd/snapshotd.sock";

/// Command-line flags of `snapshotd`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "snapshotd",
    version,
    about = "Serves containerd's snapshots API on a unix socket (a containerd proxy snapshotter)",
    long_about = "Serves containerd's snapshots gRPC API on a unix socket, backed by the native, \
overlay or btrfs snapshotter, so containerd can use it as a proxy plugin:\n\n  \
[proxy_plugins.snapshotd]\n    type = \"snapshot\"\n    address = \"/run/snapshotd/snapshotd.sock\"\n\n\
--print-containerd-config 1|2 prints the whole entry for containerd 1.x or 2.x.\n\n\
Settings come from the flags, then the TOML file (--config, default /etc/snapshotd/config.toml, \
which may be missing), then the defaults. SIGTERM or SIGINT stops the daemon after the calls \
in flight."
)]
pub struct Flags {
    /// TOML configuration file [default: /etc/snapshotd/config.toml, may be missing]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Backend: native, overlay or btrfs [default: overlay if the root's filesystem
    /// supports it, else native]
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,
    /// Root directory of the snapshot store [default: /var/lib/snapshotd]
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Unix socket to serve on [default: /run/snapshotd/snapshotd.sock]
    #[arg(long, value_name = "PATH")]
    pub address: Option<PathBuf>,
    /// Log level: off, error, warn, info, debug, trace [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Skip the metastore's fsync per transaction (faster; a power loss may lose the
    /// latest operations)
    #[arg(long)]
    pub no_sync: bool,
    /// Flush a layer's data to disk before its commit is recorded
    #[arg(long)]
    pub sync: bool,
    /// overlay: delete a snapshot's directory at remove instead of in cleanup
    #[arg(long)]
    pub sync_remove: bool,
    /// overlay: label each snapshot with its upper directory
    /// (containerd.io/snapshot/overlay.upperdir)
    #[arg(long)]
    pub upperdir_label: bool,
    /// overlay: an extra option for every overlay mount (repeat for more)
    #[arg(long = "mount-option", value_name = "OPT")]
    pub mount_options: Vec<String>,
    /// overlay: mount with redirect_dir=on so renaming a directory of a lower layer
    /// works (off by default, as containerd: differs do not read redirects)
    #[arg(long)]
    pub redirect_dir: bool,
    /// Cap the layer of every active snapshot without a containerd.io/snapshot/max-size
    /// label at SIZE bytes (or with K, M, G, T: powers of 1024), enforced with project
    /// quotas: overlay on xfs mounted with prjquota, or on ext4 made with -O
    /// project,quota and mounted with prjquota; the daemon refuses to start elsewhere
    /// [default: no limit]
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Serve containerd's namespaced metadata layer (namespaces from the
    /// containerd-namespace header, garbage collection in the background) for clients
    /// that are not containerd. Never behind containerd, which has its own.
    #[arg(long)]
    pub namespaced: bool,
    /// Serve Prometheus metrics over HTTP at /metrics on ADDR: a unix socket path, or
    /// IP:PORT such as 127.0.0.1:9101 [default: off]
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<String>,
    /// Print the lines containerd's config.toml needs to use this daemon (its backend,
    /// root and socket), for containerd RELEASE 1 (config version 2) or 2 (config
    /// version 3: capabilities, exports, the transfer service's unpack entry), and exit
    #[arg(long, value_name = "RELEASE")]
    pub print_containerd_config: Option<String>,
    /// The snapshotter's name in containerd, for --print-containerd-config
    #[arg(long, value_name = "NAME", default_value = "snapshotd")]
    pub containerd_name: String,
}

/// The configuration file's contents; every field is optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `backend = "overlay"`
    pub backend: Option<String>,
    /// `root = "/var/lib/snapshotd"`
    pub root: Option<PathBuf>,
    /// `address = "/run/snapshotd/snapshotd.sock"`
    pub address: Option<PathBuf>,
    /// `log_level = "info"`
    pub log_level: Option<String>,
    /// `no_sync = true`
    pub no_sync: Option<bool>,
    /// `sync = true`
    pub sync: Option<bool>,
    /// `namespaced = true`
    pub namespaced: Option<bool>,
    /// `max_size = "10G"`: the limit of a layer without a max-size label
    pub max_size: Option<String>,
    /// `metrics_address = "127.0.0.1:9101"` (or a unix socket path)
    pub metrics_address: Option<String>,
    /// The `[overlay]` table.
    #[serde(default)]
    pub overlay: OverlayFileConfig,
    /// The `[gc]` table (with `namespaced`).
    #[serde(default)]
    pub gc: GcFileConfig,
}

/// The `[gc]` table: containerd's garbage-collection scheduler knobs, for `namespaced`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GcFileConfig {
    /// `pause_threshold = 0.02`: the share of time collections may hold writers back.
    pub pause_threshold: Option<f64>,
    /// `deletion_threshold = 0`: removals that start a collection at once (0: none).
    pub deletion_threshold: Option<u64>,
    /// `mutation_threshold = 100`: changes that make the next interval collect.
    pub mutation_threshold: Option<u64>,
    /// `schedule_delay_ms = 0`: how long after being asked a collection starts.
    pub schedule_delay_ms: Option<u64>,
    /// `startup_delay_ms = 100`: when the first collection runs after start.
    pub startup_delay_ms: Option<u64>,
}

/// The `[overlay]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverlayFileConfig {
    /// `sync_remove = true`
    pub sync_remove: Option<bool>,
    /// `upperdir_label = true`
    pub upperdir_label: Option<bool>,
    /// `mount_options = ["nodev"]`
    pub mount_options: Option<Vec<String>>,
    /// `redirect_dir = true`
    pub redirect_dir: Option<bool>,
}

/// Options passed to the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendOptions {
    /// Skip the metastore's fsync.
    pub no_sync: bool,
    /// Flush a layer's data before its commit is recorded.
    pub sync: bool,
    /// overlay: delete directories at remove.
    pub sync_remove: bool,
    /// overlay: the upper-directory label.
    pub upperdir_label: bool,
    /// overlay: extra mount options.
    pub mount_options: Vec<String>,
    /// overlay: `redirect_dir=on`.
    pub redirect_dir: bool,
    /// The limit of an active snapshot's layer without a max-size label.
    pub max_size: Option<u64>,
}

/// The merged configuration the daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The backend; `None` means "detect from the root's filesystem".
    pub backend: Option<Backend>,
    /// The store's root directory.
    pub root: PathBuf,
    /// The socket path.
    pub address: PathBuf,
    /// The log level.
    pub log_level: LevelFilter,
    /// Options of the backend.
    pub options: BackendOptions,
    /// Serve the namespaced metadata layer.
    pub namespaced: bool,
    /// The collector's policy (with `namespaced`).
    pub gc: snapshots::metadata::GcPolicy,
    /// Where Prometheus metrics are served (off when `None`).
    pub metrics_address: Option<crate::metrics::MetricsAddress>,
}

impl Config {
    /// Reads the configuration file (the one `flags.config` names, else the default one
    /// if it exists) and merges `flags` over it.
    ///
    /// # Errors
    /// [`DaemonError`] naming the file when it cannot be read or parsed, or naming the bad
    /// value (backend, log level).
    pub fn load(flags: &Flags) -> Result<Config, DaemonError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => {
                let path = Path::new(DEFAULT_CONFIG);
                if path.exists() {
                    read_file(path)?
                } else {
                    FileConfig::default()
                }
            }
        };
        Config::merge(flags, file)
    }

    /// Merges `flags` over `file` over the defaults.
    ///
    /// # Errors
    /// [`DaemonError`] naming a bad backend or log level.
    pub fn merge(flags: &Flags, file: FileConfig) -> Result<Config, DaemonError> {
        let backend = match flags.backend.as_ref().or(file.backend.as_ref()) {
            Some(name) => Some(name.parse::<Backend>().map_err(DaemonError::Value)?),
            None => None,
        };
        let level = flags
            .log_level
            .as_deref()
            .or(file.log_level.as_deref())
            .unwrap_or("info");
        let ov = file.overlay;
        let namespaced = flags.namespaced || file.namespaced.unwrap_or(false);
        if namespaced && (flags.no_sync || file.no_sync.unwrap_or(false)) {
            // The namespace metadata commits durably; a backend that does not could lose,
            // in a power cut, snapshots whose records survive.
            return Err(DaemonError::Value(snapshots::Error::invalid_argument(
                "namespaced with no_sync: a power cut could leave namespace records naming \
                 snapshots the backend lost; drop one of the two",
            )));
        }
        Ok(Config {
            backend,
            root: flags
                .root
                .clone()
                .or(file.root)
                .unwrap_or_else(|| DEFAULT_ROOT.into()),
            address: flags
                .address
                .clone()
                .or(file.address)
                .unwrap_or_else(|| DEFAULT_ADDRESS.into()),
            log_level: crate::logger::parse_level(level)?,
            options: BackendOptions {
                no_sync: flags.no_sync || file.no_sync.unwrap_or(false),
                sync: flags.sync || file.sync.unwrap_or(false),
                sync_remove: flags.sync_remove || ov.sync_remove.unwrap_or(false),
                upperdir_label: flags.upperdir_label || ov.upperdir_label.unwrap_or(false),
                mount_options: if flags.mount_options.is_empty() {
                    ov.mount_options.unwrap_or_default()
                } else {
                    flags.mount_options.clone()
                },
                redirect_dir: flags.redirect_dir || ov.redirect_dir.unwrap_or(false),
                max_size: match flags.max_size.as_ref().or(file.max_size.as_ref()) {
                    Some(v) => Some(
                        snapshots::snapshot_core::quota::parse_size("--max-size", v)
                            .map_err(DaemonError::Value)?,
                    ),
                    None => None,
                },
            },
            namespaced,
            gc: gc_policy(&file.gc)?,
            metrics_address: match flags
                .metrics_address
                .as_ref()
                .or(file.metrics_address.as_ref())
            {
                Some(a) => Some(
                    crate::metrics::MetricsAddress::parse(a)
                        .map_err(|m| DaemonError::Value(snapshots::Error::invalid_argument(m)))?,
                ),
                None => None,
            },
        })
    }
}

fn gc_policy(g: &GcFileConfig) -> Result<snapshots::metadata::GcPolicy, DaemonError> {
    let d = snapshots::metadata::GcPolicy::default();
    let pause = g.pause_threshold.unwrap_or(d.pause_threshold);
    if !(0.0..=0.5).contains(&pause) {
        return Err(DaemonError::Value(snapshots::Error::invalid_argument(format!(
            "[gc] pause_threshold = {pause}: give a share between 0 and 0.5 (0.02 is 20 ms in every second)"
        ))));
    }
    let ms = |v: Option<u64>, dflt: std::time::Duration| {
        v.map_or(dflt, std::time::Duration::from_millis)
    };
    Ok(snapshots::metadata::GcPolicy {
        pause_threshold: pause,
        deletion_threshold: g.deletion_threshold.unwrap_or(d.deletion_threshold),
        mutation_threshold: g.mutation_threshold.unwrap_or(d.mutation_threshold),
        schedule_delay: ms(g.schedule_delay_ms, d.schedule_delay),
        startup_delay: ms(g.startup_delay_ms, d.startup_delay),
    })
}

fn read_file(path: &Path) -> Result<FileConfig, DaemonError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DaemonError::io("reading config file", path, e))?;
    toml::from_str(&text).map_err(|e| DaemonError::ConfigSyntax {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

impl BackendOptions {
    /// The facade's options for these settings: the common ones go to every backend.
    pub fn to_options(&self) -> snapshots::Options {
        #[allow(unused_mut)]
        let mut o = snapshots::Options::default();
        o.common = snapshots::snapshot_core::lifecycle::Options {
            no_sync: self.no_sync,
            sync: self.sync,
            // Unset means each backend's default (overlay: asynchronous, as containerd's).
            async_remove: self.sync_remove.then_some(false),
            max_size: self.max_size,
            ..Default::default()
        };
        #[cfg(feature = "overlay")]
        {
            o.overlay = snapshots::snapshot_overlay::OverlayConfig {
                upperdir_label: self.upperdir_label,
                mount_options: self.mount_options.clone(),
                redirect_dir: self.redirect_dir,
                ..Default::default()
            };
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("snapshotd").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults() {
        let c = Config::merge(&flags(&[]), FileConfig::default()).unwrap();
        assert_eq!(c.backend, None);
        assert_eq!(c.root, Path::new(DEFAULT_ROOT));
        assert_eq!(c.address, Path::new(DEFAULT_ADDRESS));
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(c.options, BackendOptions::default());
    }

    #[test]
    fn namespaced_mode_and_the_collectors_policy_come_from_the_file_or_the_flag() {
        let c = Config::merge(&flags(&[]), FileConfig::default()).unwrap();
        assert!(!c.namespaced);
        assert_eq!(c.gc, snapshots::metadata::GcPolicy::default());
        assert!(
            Config::merge(&flags(&["--namespaced"]), FileConfig::default())
                .unwrap()
                .namespaced
        );
        let file: FileConfig = toml::from_str(
            "namespaced = true\n[gc]\npause_threshold = 0.1\ndeletion_threshold = 5\nstartup_delay_ms = 0\n",
        )
        .unwrap();
        let c = Config::merge(&flags(&[]), file).unwrap();
        assert!(c.namespaced);
        assert_eq!(c.gc.pause_threshold, 0.1);
        assert_eq!(c.gc.deletion_threshold, 5);
        assert_eq!(c.gc.startup_delay, std::time::Duration::ZERO);
        assert_eq!(c.gc.mutation_threshold, 100);
        let bad: FileConfig = toml::from_str("[gc]\npause_threshold = 0.9\n").unwrap();
        let e = Config::merge(&flags(&[]), bad).unwrap_err();
        assert!(e.to_string().contains("pause_threshold"), "{e}");
        assert!(toml::from_str::<FileConfig>("[gc]\npause = 1\n").is_err());
        let e = Config::merge(
            &flags(&["--namespaced", "--no-sync"]),
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no_sync"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileConfig = toml::from_str(
            r#"
            backend = "native"
            root = "/srv/file-root"
            address = "/run/file.sock"
            log_level = "debug"
            [overlay]
            sync_remove = true
            mount_options = ["nodev"]
            "#,
        )
        .unwrap();
        let c = Config::merge(
            &flags(&[
                "--backend",
                "overlay",
                "--root",
                "/srv/flag-root",
                "--mount-option",
                "ro",
            ]),
            file,
        )
        .unwrap();
        assert_eq!(c.backend, Some(Backend::Overlay));
        assert_eq!(c.root, Path::new("/srv/flag-root"));
        assert_eq!(c.address, Path::new("/run/file.sock"));
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert!(c.options.sync_remove);
        assert_eq!(c.options.mount_options, vec!["ro".to_string()]);
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::merge(&flags(&["--backend", "zfs"]), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("zfs"), "{e}");
        let e = Config::merge(&flags(&["--log-level", "loud"]), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("loud"), "{e}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "backend = \n").unwrap();
        let e = Config::load(&Flags {
            config: Some(bad.clone()),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        let unknown = dir.path().join("unknown.toml");
        std::fs::write(&unknown, "bakend = \"native\"\n").unwrap();
        let e = Config::load(&Flags {
            config: Some(unknown),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("bakend"), "{e}");
        let missing = dir.path().join("missing.toml");
        let e = Config::load(&Flags {
            config: Some(missing.clone()),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
    }

    #[cfg(all(feature = "native", feature = "overlay"))]
    #[test]
    fn options_reach_the_backends() {
        let c = Config::merge(
            &flags(&[
                "--sync-remove",
                "--upperdir-label",
                "--no-sync",
                "--sync",
                "--redirect-dir",
            ]),
            FileConfig::default(),
        )
        .unwrap();
        let o = c.options.to_options();
        assert_eq!(o.common.async_remove, Some(false));
        assert!(o.common.no_sync && o.common.sync);
        assert!(o.overlay.upperdir_label && o.overlay.redirect_dir);
        let d = Config::merge(&flags(&[]), FileConfig::default())
            .unwrap()
            .options
            .to_options();
        assert_eq!(
            d.common.async_remove, None,
            "each backend keeps its own remove default"
        );
    }
}
