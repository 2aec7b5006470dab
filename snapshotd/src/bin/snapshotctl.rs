//! snapshotctl: inspect and drive a snapshotd daemon over its socket.
//! See `snapshotctl --help` and `snapshotctl <command> --help`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use snapshotd::client::{connect_collector, connect_in, Client, NamespaceHeader};
use snapshotd::config::DEFAULT_ADDRESS;
use snapshotd::convert::{from_status, info_from_proto, mount_from_proto};
use snapshotd::proto::snapshots as pb;
use snapshotd::time::rfc3339;
use snapshots::snapshot_core::fsck::FsckReport;
use snapshots::{Error, Info, Mount, Usage};

#[derive(Parser)]
#[command(
    name = "snapshotctl",
    version,
    about = "Inspect and drive a snapshotd daemon",
    long_about = "Inspect and drive a snapshotd daemon over its unix socket: list, inspect, \
create, commit, label and remove snapshots, mount them for a look, and run cleanup.\n\n\
Keys made by containerd carry its namespace and a sequence number (\"default/12/sha256:...\"). \
Output is a table for people by default; --json prints one JSON document for scripts."
)]
struct Cli {
    /// The daemon's socket
    #[arg(long, global = true, default_value = DEFAULT_ADDRESS, value_name = "PATH")]
    address: PathBuf,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    /// The namespace to work in, for a daemon started with --namespaced (sent in the
    /// containerd-namespace header)
    #[arg(long, short = 'n', global = true, value_name = "NS")]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List snapshots, optionally only those matching filters.
    ///
    /// Filters use containerd's syntax: `kind==committed`, `parent==layer-1`,
    /// `labels."containerd.io/gc.root"`, `name~=^default/`. Commas inside one filter are
    /// AND; several filters are OR.
    #[command(alias = "list")]
    Ls {
        /// Filters (any one matching is enough)
        filters: Vec<String>,
    },
    /// Show snapshots as a tree of parents and children.
    Tree,
    /// Show everything known about one snapshot: kind, parent, labels, times.
    Info {
        /// Key or committed name
        key: String,
    },
    /// Show disk usage (bytes and inodes of the snapshot's own layer); all snapshots when
    /// no key is given.
    Usage {
        /// Keys or names
        keys: Vec<String>,
    },
    /// Show the mounts of an active snapshot or view; with TARGET, print them as mount(8)
    /// commands for that target.
    Mounts {
        /// Key of an active snapshot or view
        key: String,
        /// Directory to mount at (only for the printed commands)
        target: Option<PathBuf>,
    },
    /// Create a writable (active) snapshot KEY on the committed snapshot PARENT (none:
    /// an empty root) and print its mounts.
    Prepare {
        /// Key of the new snapshot
        key: String,
        /// Committed parent
        parent: Option<String>,
        /// Label to set, `key=value` (repeat for more)
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// Create a read-only view KEY of the committed snapshot PARENT and print its mounts.
    View {
        /// Key of the new view
        key: String,
        /// Committed parent
        parent: Option<String>,
        /// Label to set, `key=value` (repeat for more)
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// Commit the active snapshot KEY as the committed snapshot NAME; KEY is free again.
    Commit {
        /// Name of the committed snapshot
        name: String,
        /// Key of the active snapshot
        key: String,
        /// Label of the committed snapshot, `key=value` (the active's labels are not kept)
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Rebase onto this committed parent (for a snapshot prepared without one)
        #[arg(long)]
        parent: Option<String>,
    },
    /// Remove snapshots (children first: a snapshot with children cannot be removed).
    #[command(alias = "remove", alias = "delete")]
    Rm {
        /// Keys or names
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Show the labels of KEY, or set them: `k=v` sets, `k=` removes.
    Label {
        /// Key or name
        key: String,
        /// Labels to set or (with an empty value) remove
        labels: Vec<String>,
    },
    /// Delete the files of removed snapshots now (backends with asynchronous remove; on a
    /// --namespaced daemon, a garbage collection).
    Cleanup,
    /// Collect garbage now on a daemon started with --namespaced, and show what went:
    /// records no root reaches (roots are labelled containerd.io/gc.root) and backend
    /// snapshots no record names.
    Gc {
        /// Show what a collection would remove; remove nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Mount the active snapshot or view KEY at DIR (as root).
    Mount {
        /// Key of an active snapshot or view
        key: String,
        /// Existing directory to mount at
        dir: PathBuf,
    },
    /// Unmount everything mounted at DIR.
    Unmount {
        /// The directory given to `mount`
        dir: PathBuf,
    },
    /// Audit the store: cross-check its records, the directories under its root and the
    /// live mounts, and report each finding with the space it holds and its owner where
    /// known.
    ///
    /// Findings: orphan-directory (a tree no record owns), stale-staging (a create that
    /// never finished), record-without-directory (a snapshot whose data is gone),
    /// leaked-mount (a mount of a removed snapshot's tree, or one inside the root) and
    /// unknown-entry (a file the store never makes). Retired trees awaiting cleanup are
    /// listed as pending, not as findings.
    ///
    /// By default it asks the daemon at --address, which audits while it serves (other
    /// calls wait at most one short metadata transaction). With --root it opens a stopped
    /// daemon's root itself (the daemon holds the root's lock while it runs).
    ///
    /// Exit status: 0 clean (or everything found was repaired), 1 findings left, 2 could
    /// not check.
    Fsck {
        /// Delete what is provably safe to delete: orphan and stale staging trees, and
        /// retired trees awaiting cleanup. Records, mounts and unknown files are left and
        /// reported with what to do.
        #[arg(long)]
        repair: bool,
        /// Audit the store at DIR directly (the daemon must be stopped)
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// With --root: the backend whose store DIR holds (default: the one it records)
        #[arg(long, value_name = "NAME", requires = "root")]
        backend: Option<String>,
        /// Also cross-check containerd's view through its API at SOCKET, in every
        /// namespace: backend snapshots containerd has no record of
        /// (unknown-to-containerd), active snapshots no container uses and no lease holds
        /// (unused-active), and the owner of each finding (container, lease, image)
        #[arg(long, value_name = "SOCKET")]
        containerd: Option<PathBuf>,
        /// The name containerd's configuration gives this daemon's proxy plugin
        #[arg(
            long,
            value_name = "NAME",
            default_value = "snapshotd",
            requires = "containerd"
        )]
        containerd_snapshotter: String,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Command::Fsck {
        repair,
        root,
        backend,
        containerd,
        containerd_snapshotter,
    } = &cli.command
    {
        let containerd = containerd
            .as_deref()
            .map(|s| (s, containerd_snapshotter.as_str()));
        std::process::exit(fsck(
            &cli.address,
            *repair,
            root.as_deref(),
            backend.as_deref(),
            containerd,
            cli.json,
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(CtlError::Runtime(e)),
    };
    if let Err(e) = result {
        eprintln!("snapshotctl: {e}");
        std::process::exit(1);
    }
}

/// What makes snapshotctl fail; the message is what it prints.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(
        "cannot connect to snapshotd at {}: {source}: is the daemon running? (--address)",
        address.display()
    )]
    Connect {
        address: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("label {0:?} is not key=value")]
    Label(String),
    #[error("removing {key:?}: {source}")]
    Remove {
        key: String,
        #[source]
        source: Error,
    },
    /// The daemon's answer or a mount's error, with containerd's error kind.
    #[error("{0}")]
    Snapshot(#[from] Error),
}

async fn client(address: &Path, namespace: Option<&str>) -> Result<Client, CtlError> {
    let header = NamespaceHeader::new(namespace)?;
    connect_in(address, header)
        .await
        .map_err(|source| CtlError::Connect {
            address: address.to_path_buf(),
            source,
        })
}

fn err(status: tonic::Status) -> CtlError {
    CtlError::Snapshot(from_status(&status))
}

fn parse_labels(pairs: &[String]) -> Result<HashMap<String, String>, CtlError> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CtlError::Label(p.clone())),
        })
        .collect()
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    let json = cli.json;
    // Unmount needs no daemon.
    if let Command::Unmount { dir } = &cli.command {
        snapshots::mount::unmount_all(dir).map_err(CtlError::from)?;
        if json {
            println!("{}", json!({ "unmounted": dir }));
        }
        return Ok(());
    }
    let mut c = client(&cli.address, cli.namespace.as_deref()).await?;
    match cli.command {
        Command::Ls { filters } => {
            let infos = list(&mut c, filters).await?;
            if json {
                print_json(&Value::Array(infos.iter().map(info_json).collect()));
            } else {
                let rows = infos
                    .iter()
                    .map(|i| vec![i.name.clone(), i.parent.clone(), i.kind.to_string()])
                    .collect();
                print_table(&["KEY", "PARENT", "KIND"], rows);
            }
        }
        Command::Tree => {
            let infos = list(&mut c, Vec::new()).await?;
            if json {
                print_json(&tree_json(&infos));
            } else {
                print!("{}", tree_text(&infos));
            }
        }
        Command::Info { key } => {
            let info = stat(&mut c, &key).await?;
            if json {
                print_json(&info_json(&info));
            } else {
                println!("Name:    {}", info.name);
                println!("Kind:    {}", info.kind);
                println!("Parent:  {}", info.parent);
                println!("Created: {}", rfc3339(info.created));
                println!("Updated: {}", rfc3339(info.updated));
                println!("Labels:");
                for (k, v) in &info.labels {
                    println!("  {k}={v}");
                }
            }
        }
        Command::Usage { keys } => {
            let keys = if keys.is_empty() {
                list(&mut c, Vec::new())
                    .await?
                    .into_iter()
                    .map(|i| i.name)
                    .collect()
            } else {
                keys
            };
            let mut rows = Vec::new();
            for key in keys {
                let r = c
                    .usage(pb::UsageRequest {
                        key: key.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(err)?
                    .into_inner();
                rows.push((
                    key,
                    Usage {
                        size: r.size as u64,
                        inodes: r.inodes as u64,
                    },
                ));
            }
            if json {
                let v = rows
                    .iter()
                    .map(|(k, u)| json!({ "key": k, "size": u.size, "inodes": u.inodes }))
                    .collect();
                print_json(&Value::Array(v));
            } else {
                let rows = rows
                    .into_iter()
                    .map(|(k, u)| vec![k, human_size(u.size), u.inodes.to_string()])
                    .collect();
                print_table(&["KEY", "SIZE", "INODES"], rows);
            }
        }
        Command::Mounts { key, target } => {
            let mounts = mounts(&mut c, &key).await?;
            print_mounts(&mounts, target.as_deref(), json);
        }
        Command::Prepare {
            key,
            parent,
            labels,
        } => {
            let r = c
                .prepare(pb::PrepareSnapshotRequest {
                    key,
                    parent: parent.unwrap_or_default(),
                    labels: parse_labels(&labels)?,
                    ..Default::default()
                })
                .await
                .map_err(err)?
                .into_inner();
            print_mounts(
                &r.mounts
                    .into_iter()
                    .map(mount_from_proto)
                    .collect::<Vec<_>>(),
                None,
                json,
            );
        }
        Command::View {
            key,
            parent,
            labels,
        } => {
            let r = c
                .view(pb::ViewSnapshotRequest {
                    key,
                    parent: parent.unwrap_or_default(),
                    labels: parse_labels(&labels)?,
                    ..Default::default()
                })
                .await
                .map_err(err)?
                .into_inner();
            print_mounts(
                &r.mounts
                    .into_iter()
                    .map(mount_from_proto)
                    .collect::<Vec<_>>(),
                None,
                json,
            );
        }
        Command::Commit {
            name,
            key,
            labels,
            parent,
        } => {
            c.commit(pb::CommitSnapshotRequest {
                name: name.clone(),
                key,
                labels: parse_labels(&labels)?,
                parent: parent.unwrap_or_default(),
                ..Default::default()
            })
            .await
            .map_err(err)?;
            if json {
                println!("{}", json!({ "committed": name }));
            }
        }
        Command::Rm { keys } => {
            for key in &keys {
                c.remove(pb::RemoveSnapshotRequest {
                    key: key.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|s| CtlError::Remove {
                    key: key.clone(),
                    source: from_status(&s),
                })?;
            }
            if json {
                println!("{}", json!({ "removed": keys }));
            }
        }
        Command::Label { key, labels } => {
            let info = if labels.is_empty() {
                stat(&mut c, &key).await?
            } else {
                let set = parse_labels(&labels)?;
                let paths = set.keys().map(|k| format!("labels.{k}")).collect();
                let r = c
                    .update(pb::UpdateSnapshotRequest {
                        info: Some(pb::Info {
                            name: key,
                            labels: set,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask { paths }),
                        ..Default::default()
                    })
                    .await
                    .map_err(err)?
                    .into_inner();
                info_from_proto(r.info.unwrap_or_default())
            };
            if json {
                print_json(&json!(info.labels));
            } else {
                for (k, v) in &info.labels {
                    println!("{k}={v}");
                }
            }
        }
        Command::Cleanup => {
            c.cleanup(pb::CleanupRequest::default())
                .await
                .map_err(err)?;
            if json {
                println!("{}", json!({ "cleanup": "done" }));
            }
        }
        Command::Gc { dry_run } => gc(&cli.address, dry_run, json).await?,
        Command::Mount { key, dir } => {
            let mounts = mounts(&mut c, &key).await?;
            snapshots::mount::mount_all(&mounts, &dir).map_err(CtlError::from)?;
            if json {
                println!("{}", json!({ "mounted": key, "at": dir }));
            }
        }
        Command::Unmount { .. } | Command::Fsck { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(())
}

async fn list(c: &mut Client, filters: Vec<String>) -> Result<Vec<Info>, CtlError> {
    let mut stream = c
        .list(pb::ListSnapshotsRequest {
            filters,
            ..Default::default()
        })
        .await
        .map_err(err)?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await.map_err(err)? {
        out.extend(batch.info.into_iter().map(info_from_proto));
    }
    Ok(out)
}

async fn stat(c: &mut Client, key: &str) -> Result<Info, CtlError> {
    let r = c
        .stat(pb::StatSnapshotRequest {
            key: key.to_string(),
            ..Default::default()
        })
        .await
        .map_err(err)?
        .into_inner();
    Ok(info_from_proto(r.info.unwrap_or_default()))
}

async fn mounts(c: &mut Client, key: &str) -> Result<Vec<Mount>, CtlError> {
    let r = c
        .mounts(pb::MountsRequest {
            key: key.to_string(),
            ..Default::default()
        })
        .await
        .map_err(err)?
        .into_inner();
    Ok(r.mounts.into_iter().map(mount_from_proto).collect())
}

fn print_mounts(mounts: &[Mount], target: Option<&Path>, json: bool) {
    if json {
        let v = mounts
            .iter()
            .map(|m| json!({ "type": m.kind, "source": m.source, "options": m.options }))
            .collect();
        print_json(&Value::Array(v));
    } else if let Some(target) = target {
        for m in mounts {
            println!(
                "mount -t {} {} {} -o {}",
                m.kind,
                m.source,
                target.display(),
                m.options.join(",")
            );
        }
    } else {
        let rows = mounts
            .iter()
            .map(|m| vec![m.kind.clone(), m.source.clone(), m.options.join(",")])
            .collect();
        print_table(&["TYPE", "SOURCE", "OPTIONS"], rows);
    }
}

fn info_json(i: &Info) -> Value {
    json!({
        "name": i.name,
        "parent": i.parent,
        "kind": i.kind.as_filter_str(),
        "labels": i.labels,
        "created": rfc3339(i.created),
        "updated": rfc3339(i.updated),
    })
}

fn children_of(infos: &[Info]) -> BTreeMap<&str, Vec<&Info>> {
    let mut children: BTreeMap<&str, Vec<&Info>> = BTreeMap::new();
    let names: std::collections::HashSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    for i in infos {
        // A parent missing from the list (removed meanwhile) shows its child as a root.
        let parent = if names.contains(i.parent.as_str()) {
            i.parent.as_str()
        } else {
            ""
        };
        children.entry(parent).or_default().push(i);
    }
    children
}

fn tree_text(infos: &[Info]) -> String {
    fn walk(out: &mut String, children: &BTreeMap<&str, Vec<&Info>>, name: &str, depth: usize) {
        for c in children.get(name).into_iter().flatten() {
            let lead = if depth == 0 {
                String::new()
            } else {
                format!("{}\\_ ", "  ".repeat(depth - 1))
            };
            out.push_str(&format!("{lead}{} [{}]\n", c.name, c.kind));
            walk(out, children, &c.name, depth + 1);
        }
    }
    let children = children_of(infos);
    let mut out = String::new();
    walk(&mut out, &children, "", 0);
    out
}

fn tree_json(infos: &[Info]) -> Value {
    fn walk(children: &BTreeMap<&str, Vec<&Info>>, name: &str) -> Value {
        Value::Array(
            children
                .get(name)
                .into_iter()
                .flatten()
                .map(|c| {
                    json!({ "name": c.name, "kind": c.kind.as_filter_str(), "children": walk(children, &c.name) })
                })
                .collect(),
        )
    }
    walk(&children_of(infos), "")
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Runs `snapshotctl fsck` and returns its exit status: 0 clean, 1 findings left, 2 could
/// not check.
fn fsck(
    address: &Path,
    repair: bool,
    root: Option<&Path>,
    backend: Option<&str>,
    containerd: Option<(&Path, &str)>,
    json: bool,
) -> i32 {
    match audit(address, repair, root, backend, containerd) {
        Ok(r) => {
            print_fsck(&r, repair, json);
            i32::from(r.unrepaired() > 0)
        }
        Err(e) => {
            eprintln!("snapshotctl fsck: could not check: {e}");
            2
        }
    }
}

/// The store's audit (through the daemon, or of a stopped daemon's root), with
/// containerd's view merged in when asked.
fn audit(
    address: &Path,
    repair: bool,
    root: Option<&Path>,
    backend: Option<&str>,
    containerd: Option<(&Path, &str)>,
) -> Result<FsckReport, String> {
    let sn: Box<dyn snapshots::Snapshotter> = match root {
        Some(root) => open_offline(root, backend)?,
        None => Box::new(
            snapshotd::client::RemoteSnapshotter::connect(address).map_err(|e| e.to_string())?,
        ),
    };
    let r = audit_with(&*sn, address, repair, root.is_some(), containerd);
    let closed = sn.close();
    let r = r?;
    closed.map_err(|e| e.to_string())?;
    Ok(r)
}

fn audit_with(
    sn: &dyn snapshots::Snapshotter,
    address: &Path,
    repair: bool,
    offline: bool,
    containerd: Option<(&Path, &str)>,
) -> Result<FsckReport, String> {
    let c = sn.as_cleaner().ok_or("the store has no cleaner")?;
    let mut report = c.fsck(repair).map_err(|e| match e.kind() {
        snapshots::ErrorKind::NotImplemented if !offline => format!(
            "{e}: the daemon at {} predates fsck (restart it with this release), or stop \
             it and run snapshotctl fsck --root DIR",
            address.display()
        ),
        _ => e.to_string(),
    })?;
    let Some((socket, name)) = containerd else {
        return Ok(report);
    };
    let mut backend = Vec::new();
    sn.walk(&[], &mut |i| {
        backend.push(i.clone());
        Ok(())
    })
    .map_err(|e| format!("listing the store's snapshots: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    let view = rt.block_on(snapshotd::containerd_view::read(socket, name))?;
    snapshotd::containerd_view::merge(&mut report, &view, &backend, name);
    snapshotd::containerd_view::settle(
        &mut report,
        |ns| rt.block_on(snapshotd::containerd_view::keys_in(socket, ns, name)),
        |key| {
            sn.stat(key)
                .is_err_and(|e| e.kind() == snapshots::ErrorKind::NotFound)
        },
    )?;
    Ok(report)
}

fn open_offline(
    root: &Path,
    backend: Option<&str>,
) -> Result<Box<dyn snapshots::Snapshotter>, String> {
    let backend = match backend {
        Some(b) => b.parse::<snapshots::Backend>().map_err(|e| e.to_string())?,
        None => match snapshots::snapshot_core::lifecycle::recorded_backend(root) {
            Ok(Some(b)) => b.parse::<snapshots::Backend>().map_err(|e| e.to_string())?,
            Ok(None) => {
                return Err(format!(
                    "{} holds no snapshot store (no {}/backend file): give the daemon's \
                     root, or --backend NAME",
                    root.display(),
                    root.display()
                ))
            }
            Err(e) => return Err(e.to_string()),
        },
    };
    let mut options = snapshots::Options::default();
    // Report what a crash left rather than sweep it at open.
    options.common.keep_leftovers = true;
    snapshots::open(backend, root, &options).map_err(|e| match e.kind() {
        snapshots::ErrorKind::Unavailable => format!(
            "{e}: a daemon serves this root: run snapshotctl fsck without --root to ask it \
             (--address its socket)"
        ),
        _ => e.to_string(),
    })
}

fn print_fsck(r: &FsckReport, repair: bool, json: bool) {
    let text = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    if json {
        let findings: Vec<Value> = r
            .findings
            .iter()
            .map(|f| {
                json!({
                    "kind": f.kind.as_str(),
                    "path": text(&f.path),
                    "key": f.key,
                    "id": f.id,
                    "size": f.usage.map(|u| u.size),
                    "inodes": f.usage.map(|u| u.inodes),
                    "owner": f.owner,
                    "detail": f.detail,
                    "repaired": f.repaired,
                })
            })
            .collect();
        let pending: Vec<Value> = r
            .pending
            .iter()
            .map(|p| {
                json!({
                    "path": p.path.display().to_string(),
                    "size": p.usage.map(|u| u.size),
                    "inodes": p.usage.map(|u| u.inodes),
                    "deleted": p.deleted,
                })
            })
            .collect();
        print_json(&json!({
            "backend": r.backend,
            "root": r.root.display().to_string(),
            "records": r.records,
            "directories": r.directories,
            "mounts": r.mounts,
            "repair": repair,
            "findings": findings,
            "pending": pending,
            "clean": r.unrepaired() == 0,
        }));
        return;
    }
    println!(
        "{} store at {}: {} records, {} directory entries, {} mounts of its trees",
        r.backend,
        r.root.display(),
        r.records,
        r.directories,
        r.mounts
    );
    if !r.findings.is_empty() {
        let rows = r
            .findings
            .iter()
            .map(|f| {
                vec![
                    f.kind.as_str().to_string(),
                    text(&f.path).or_else(|| f.key.clone()).unwrap_or_default(),
                    f.usage
                        .map(|u| human_size(u.size))
                        .unwrap_or_else(|| "-".into()),
                    f.owner
                        .clone()
                        .or_else(|| f.key.clone())
                        .unwrap_or_else(|| "-".into()),
                    match f.repaired {
                        true => "repaired".into(),
                        false => f.detail.clone(),
                    },
                ]
            })
            .collect();
        print_table(&["FINDING", "PATH OR KEY", "SIZE", "OWNER", "STATUS"], rows);
    }
    if !r.pending.is_empty() {
        let total: u64 = r
            .pending
            .iter()
            .filter_map(|p| p.usage)
            .map(|u| u.size)
            .sum();
        let deleted = r.pending.iter().filter(|p| p.deleted).count();
        println!(
            "{} removed trees awaiting cleanup ({}){}",
            r.pending.len(),
            human_size(total),
            match repair {
                true => format!(", {deleted} deleted"),
                false => String::new(),
            }
        );
    }
    match (r.findings.len(), r.unrepaired()) {
        (0, _) => println!("clean"),
        (n, 0) => println!("{n} findings, all repaired"),
        (n, left) => println!(
            "{n} findings, {left} left{}",
            match repair {
                true => " (not safe to repair: see STATUS)",
                false => ": snapshotctl fsck --repair deletes orphan and stale staging trees",
            }
        ),
    }
}

async fn gc(address: &Path, dry_run: bool, json: bool) -> Result<(), CtlError> {
    let mut c = connect_collector(address)
        .await
        .map_err(|source| CtlError::Connect {
            address: address.to_path_buf(),
            source,
        })?;
    let r = c
        .collect(snapshotd::proto::collector::CollectRequest { dry_run })
        .await
        .map_err(err)?
        .into_inner();
    let ms = |ns: i64| ns as f64 / 1e6;
    if json {
        let records: Vec<_> = r
            .records
            .iter()
            .map(|x| json!({ "namespace": x.namespace, "key": x.key }))
            .collect();
        let kept: Vec<_> = r
            .kept
            .iter()
            .map(|k| json!({ "name": k.name, "reason": k.reason }))
            .collect();
        println!(
            "{}",
            json!({
                "dry_run": r.dry_run,
                "records": records,
                "backend": r.backend,
                "kept": kept,
                "metadata_ms": ms(r.metadata_ns),
                "longest_pause_ms": ms(r.longest_pause_ns),
                "total_ms": ms(r.total_ns),
            })
        );
        return Ok(());
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut rows: Vec<Vec<String>> = r
        .records
        .iter()
        .map(|x| {
            vec![
                "record".into(),
                x.namespace.clone(),
                x.key.clone(),
                verb.into(),
            ]
        })
        .collect();
    rows.extend(
        r.backend
            .iter()
            .map(|b| vec!["backend".into(), String::new(), b.clone(), verb.into()]),
    );
    rows.extend(r.kept.iter().map(|k| {
        vec![
            "backend".into(),
            String::new(),
            k.name.clone(),
            format!("kept: {}", k.reason),
        ]
    }));
    if rows.is_empty() {
        println!("nothing to collect");
    } else {
        print_table(&["WHAT", "NAMESPACE", "KEY", "DONE"], rows);
    }
    println!(
        "{} records and {} backend snapshots {verb}; metadata transactions {:.1} ms (longest {:.1} ms), in all {:.1} ms",
        r.records.len(),
        r.backend.len(),
        ms(r.metadata_ns),
        ms(r.longest_pause_ns),
        ms(r.total_ns)
    );
    Ok(())
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   ", w = *w));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshots::Kind;

    #[test]
    fn tree_nests_children() {
        let mk = |name: &str, parent: &str, kind| Info {
            parent: parent.into(),
            ..Info::new(kind, name)
        };
        let infos = vec![
            mk("l1", "", Kind::Committed),
            mk("l2", "l1", Kind::Committed),
            mk("c", "l2", Kind::Active),
        ];
        assert_eq!(
            tree_text(&infos),
            "l1 [Committed]\n\\_ l2 [Committed]\n  \\_ c [Active]\n"
        );
    }

    #[test]
    fn labels_parse() {
        let l = parse_labels(&["a=1".into(), "b=".into()]).unwrap();
        assert_eq!(l["a"], "1");
        assert_eq!(l["b"], "");
        assert!(parse_labels(&["nokey".into()]).is_err());
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(4096), "4.0 KiB");
    }
}
