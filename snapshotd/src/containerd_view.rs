//! containerd's view of the snapshots it keeps in this daemon, for `snapshotctl fsck
//! --containerd SOCKET`: read through containerd's own API in every namespace (its
//! snapshots in the proxy snapshotter, containers, leases, images and the labels of its
//! content), and cross-checked against the backend's keys, which containerd's metadata
//! layer names `<namespace>/<number>/<key>`.
//!
//! Owners: a container's snapshot is the container's; a snapshot a lease holds is the
//! lease's (an unpack or a build in progress); a committed layer of an image (found from
//! the image's target through the `containerd.io/gc.ref.content.*` labels containerd puts
//! on manifests and indexes, down to the config's
//! `containerd.io/gc.ref.snapshot.<snapshotter>` label naming the top layer's chain, and
//! that layer's parents) is the image's. Nothing here reads a blob or writes anything.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use snapshots::snapshot_core::fsck::{containerd_owner, Finding, FindingKind, FsckReport};
use snapshots::{Info, Kind};
use tonic::transport::Channel;

use crate::client::NamespaceHeader;
use crate::proto::containerd::services as cs;

/// What containerd knows, by namespace and key.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// containerd's snapshots in the snapshotter: kind and parent.
    pub snapshots: HashMap<(String, String), (Kind, String)>,
    /// Who owns a snapshot (container, lease, image), by namespace and key.
    pub owners: HashMap<(String, String), String>,
    /// Snapshots a container uses or a lease holds.
    pub used: HashSet<(String, String)>,
    /// The namespaces read.
    pub namespaces: Vec<String>,
}

fn failed(what: &str, ns: &str, s: tonic::Status) -> String {
    format!("containerd: {what} in namespace {ns:?}: {}", s.message())
}

/// Reads containerd's view at `socket` of the snapshotter it calls `snapshotter`.
///
/// # Errors
/// A message naming the call that failed (the socket cannot be reached, a call is
/// refused).
pub async fn read(socket: &Path, snapshotter: &str) -> Result<View, String> {
    let ch = crate::client::channel(socket)
        .await
        .map_err(|e| format!("cannot connect to containerd at {}: {e}", socket.display()))?;
    let mut view = View::default();
    let mut nsc = cs::namespaces::v1::namespaces_client::NamespacesClient::new(ch.clone());
    let list = nsc
        .list(cs::namespaces::v1::ListNamespacesRequest::default())
        .await
        .map_err(|s| {
            format!(
                "containerd at {}: listing namespaces: {}",
                socket.display(),
                s.message()
            )
        })?
        .into_inner();
    for ns in list.namespaces {
        let ns = ns.name;
        let header = NamespaceHeader::new(Some(&ns)).map_err(|e| e.to_string())?;
        read_namespace(&ch, header, &ns, snapshotter, &mut view).await?;
        view.namespaces.push(ns);
    }
    Ok(view)
}

/// containerd's snapshots in `ns`: key to kind and parent.
async fn snapshots_in(
    ch: &Channel,
    header: NamespaceHeader,
    ns: &str,
    snapshotter: &str,
) -> Result<BTreeMap<String, (Kind, String)>, String> {
    use crate::proto::snapshots as pb;
    let mut c = pb::snapshots_client::SnapshotsClient::with_interceptor(ch.clone(), header);
    let mut stream = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
            filters: Vec::new(),
        })
        .await
        .map_err(|s| failed("listing snapshots", ns, s))?
        .into_inner();
    let mut out = BTreeMap::new();
    while let Some(batch) = stream
        .message()
        .await
        .map_err(|s| failed("listing snapshots", ns, s))?
    {
        for i in batch.info {
            let i = crate::convert::info_from_proto(i);
            out.insert(i.name, (i.kind, i.parent));
        }
    }
    Ok(out)
}

async fn read_namespace(
    ch: &Channel,
    header: NamespaceHeader,
    ns: &str,
    snapshotter: &str,
    view: &mut View,
) -> Result<(), String> {
    let snaps = snapshots_in(ch, header.clone(), ns, snapshotter).await?;
    let key = |k: &str| (ns.to_string(), k.to_string());

    let mut containers = cs::containers::v1::containers_client::ContainersClient::with_interceptor(
        ch.clone(),
        header.clone(),
    );
    let list = containers
        .list(cs::containers::v1::ListContainersRequest::default())
        .await
        .map_err(|s| failed("listing containers", ns, s))?
        .into_inner();
    for c in list.containers {
        if c.snapshotter == snapshotter && !c.snapshot_key.is_empty() {
            view.used.insert(key(&c.snapshot_key));
            view.owners.insert(
                key(&c.snapshot_key),
                format!("container {} (namespace {ns})", c.id),
            );
        }
    }

    let mut leases =
        cs::leases::v1::leases_client::LeasesClient::with_interceptor(ch.clone(), header.clone());
    let list = leases
        .list(cs::leases::v1::ListRequest::default())
        .await
        .map_err(|s| failed("listing leases", ns, s))?
        .into_inner();
    let kind = format!("snapshots/{snapshotter}");
    for l in list.leases {
        let res = leases
            .list_resources(cs::leases::v1::ListResourcesRequest { id: l.id.clone() })
            .await
            .map_err(|s| failed("listing a lease's resources", ns, s))?
            .into_inner();
        for r in res.resources.into_iter().filter(|r| r.r#type == kind) {
            view.used.insert(key(&r.id));
            view.owners
                .entry(key(&r.id))
                .or_insert_with(|| format!("lease {} (namespace {ns})", l.id));
        }
    }

    // Images: their target, through the content's gc.ref labels, to the top layer.
    let mut content = cs::content::v1::content_client::ContentClient::with_interceptor(
        ch.clone(),
        header.clone(),
    );
    let mut stream = content
        .list(cs::content::v1::ListContentRequest::default())
        .await
        .map_err(|s| failed("listing content", ns, s))?
        .into_inner();
    let mut labels: HashMap<String, HashMap<String, String>> = HashMap::new();
    while let Some(batch) = stream
        .message()
        .await
        .map_err(|s| failed("listing content", ns, s))?
    {
        for i in batch.info {
            labels.insert(i.digest, i.labels);
        }
    }
    let mut images =
        cs::images::v1::images_client::ImagesClient::with_interceptor(ch.clone(), header);
    let list = images
        .list(cs::images::v1::ListImagesRequest::default())
        .await
        .map_err(|s| failed("listing images", ns, s))?
        .into_inner();
    let top_label = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
    let mut image_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for img in list.images {
        let Some(target) = img.target else { continue };
        let mut todo = vec![target.digest];
        let mut seen = HashSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let Some(l) = labels.get(&d) else { continue };
            for (k, v) in l {
                if k.starts_with("containerd.io/gc.ref.content.") {
                    todo.push(v.clone());
                } else if *k == top_label {
                    // The layer and every parent of it.
                    let mut layer = Some(v.clone());
                    let mut steps = 0;
                    while let Some(name) = layer.take() {
                        image_of
                            .entry(name.clone())
                            .or_default()
                            .insert(img.name.clone());
                        steps += 1;
                        layer = snaps
                            .get(&name)
                            .map(|(_, p)| p.clone())
                            .filter(|p| !p.is_empty() && steps < 10_000);
                    }
                }
            }
        }
    }
    for (layer, names) in image_of {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        view.owners.entry(key(&layer)).or_insert_with(|| {
            format!(
                "image{} {} (namespace {ns})",
                if names.len() > 1 { "s" } else { "" },
                names.join(", ")
            )
        });
    }
    for (k, v) in snaps {
        view.snapshots.insert(key(&k), v);
    }
    Ok(())
}

/// The containerd namespace and key of a backend key that containerd's metadata layer
/// made (`<namespace>/<number>/<key>`).
pub fn split_key(key: &str) -> Option<(String, String)> {
    containerd_owner(key)?;
    let (ns, rest) = key.split_once('/')?;
    let (_, k) = rest.split_once('/')?;
    Some((ns.to_string(), k.to_string()))
}

/// Adds containerd's findings to `report` (backend snapshots containerd does not know,
/// active snapshots in containerd that no container uses and no lease holds) and names
/// the owners containerd knows. `backend` are the backend's snapshots, listed after
/// `view` was read. What containerd is still doing (a snapshot it recorded after the
/// reading, one its collector is about to remove) is the caller's to settle
/// ([`settle`]).
pub fn merge(report: &mut FsckReport, view: &View, backend: &[Info], snapshotter: &str) {
    // Owners of what the store found.
    for f in &mut report.findings {
        if let Some(owner) = f
            .key
            .as_deref()
            .and_then(split_key)
            .and_then(|k| view.owners.get(&k))
        {
            f.owner = Some(owner.clone());
        }
    }
    let mut unknown: BTreeMap<String, Vec<&Info>> = BTreeMap::new();
    for i in backend {
        match split_key(&i.name) {
            Some(k) if view.snapshots.contains_key(&k) => {}
            Some((ns, _)) => unknown.entry(ns).or_default().push(i),
            None => unknown.entry(String::new()).or_default().push(i),
        }
    }
    for (_, infos) in unknown {
        for i in infos {
            let k = split_key(&i.name);
            let detail = match &k {
                None => "a key containerd's metadata layer never makes: the snapshot was \
                         made by another client of this daemon; remove it with snapshotctl \
                         rm if nothing needs it"
                    .to_string(),
                Some(_) => format!(
                    "containerd has no record of this {} snapshot: its garbage collection \
                     removes such a snapshot after the next removal in {snapshotter}; if it \
                     stays, containerd lost its record: remove it with snapshotctl rm",
                    i.kind
                ),
            };
            report.findings.push(Finding {
                kind: FindingKind::UnknownToContainerd,
                path: None,
                key: Some(i.name.clone()),
                id: None,
                usage: None,
                owner: k.map(|(ns, _)| format!("containerd namespace {ns} (no record)")),
                detail,
                repaired: false,
            });
        }
    }
    let mut unused: Vec<&(String, String)> = view
        .snapshots
        .iter()
        .filter(|(k, (kind, _))| *kind == Kind::Active && !view.used.contains(*k))
        .map(|(k, _)| k)
        .collect();
    unused.sort();
    for (ns, key) in unused {
        report.findings.push(Finding {
            kind: FindingKind::UnusedActive,
            path: None,
            key: Some(key.clone()),
            id: None,
            usage: None,
            owner: Some(format!("containerd namespace {ns}: no container, no lease")),
            detail: format!(
                "an active snapshot no container uses and no lease holds (an unpack that \
                 never finished, a `ctr snapshots prepare` left behind): if nothing needs \
                 it, `ctr -n {ns} snapshots --snapshotter {snapshotter} rm {key}`"
            ),
            repaired: false,
        });
    }
    report
        .findings
        .sort_by(|a, b| (a.kind, &a.path, &a.key).cmp(&(b.kind, &b.path, &b.key)));
}

/// How long [`settle`] gives containerd to finish what it was doing.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Drops the backend snapshots reported unknown to containerd that containerd settles
/// within [`GRACE`]: one it records meanwhile (`known(namespace)` lists its keys there)
/// or that its collector removes (`gone(key)`). Rechecks every 100 ms and returns as soon
/// as nothing is left to settle. (An active snapshot is made under a lease or for a
/// container that exists first, so an unused one needs no grace.)
pub fn settle(
    report: &mut FsckReport,
    mut known: impl FnMut(&str) -> Result<HashSet<String>, String>,
    mut gone: impl FnMut(&str) -> bool,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + GRACE;
    loop {
        let mut pending = false;
        let mut keep = Vec::with_capacity(report.findings.len());
        for f in std::mem::take(&mut report.findings) {
            let settled = match (f.kind, f.key.as_deref().and_then(split_key)) {
                (FindingKind::UnknownToContainerd, Some((ns, k))) => {
                    let key = f.key.as_deref().unwrap_or_default();
                    let done = gone(key) || known(&ns)?.contains(&k);
                    pending |= !done;
                    done
                }
                _ => false,
            };
            if !settled {
                keep.push(f);
            }
        }
        report.findings = keep;
        if !pending || std::time::Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Re-reads containerd's snapshot keys in `ns`.
///
/// # Errors
/// As [`read`].
pub async fn keys_in(
    socket: &Path,
    ns: &str,
    snapshotter: &str,
) -> Result<HashSet<String>, String> {
    let ch = crate::client::channel(socket)
        .await
        .map_err(|e| format!("cannot connect to containerd at {}: {e}", socket.display()))?;
    let header = NamespaceHeader::new(Some(ns)).map_err(|e| e.to_string())?;
    Ok(snapshots_in(&ch, header, ns, snapshotter)
        .await?
        .into_keys()
        .collect())
}
