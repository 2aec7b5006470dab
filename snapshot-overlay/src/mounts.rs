//! The mount lists of overlay snapshots, built by pure functions.
//!
//! Overlay options come in this order (containerd 1.6's, with the additions of later
//! releases at the end so the positions containerd's tests pin stay put):
//!
//! ```text
//! uidmap=? gidmap=?  index=off?  userxattr?  redirect_dir=on?  workdir=W upperdir=U (active)  volatile? (active)
//! lowerdir=P0:P1:...  <extra options>...
//! ```
//!
//! `index=off`, `userxattr`, `redirect_dir=on` and the extra options go on overlay mounts
//! only, never on binds.

use std::path::{Path, PathBuf};

use snapshot_core::{Kind, Mount};

/// What the mount shapes depend on besides the snapshot itself: where layers live, what
/// the kernel wants and what the configuration adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSettings {
    /// `<root>/snapshots`, the common directory of every layer.
    pub snapshots_dir: PathBuf,
    /// Add `index=off` (the kernel has `/sys/module/overlay/parameters/index`).
    pub index_off: bool,
    /// Add `userxattr` (running in a user namespace).
    pub userxattr: bool,
    /// Add `redirect_dir=on`.
    pub redirect_dir: bool,
    /// Extra options appended to overlay mounts after `lowerdir=`.
    pub extra_options: Vec<String>,
}

impl MountSettings {
    /// Settings with layers under `snapshots_dir` and no options.
    pub fn new(snapshots_dir: impl Into<PathBuf>) -> MountSettings {
        MountSettings {
            snapshots_dir: snapshots_dir.into(),
            index_off: false,
            userxattr: false,
            redirect_dir: false,
            extra_options: Vec::new(),
        }
    }

    /// `<snapshots>/<id>/fs`: the layer of snapshot `id`.
    pub fn upper(&self, id: u64) -> PathBuf {
        layer_dir(&self.snapshots_dir, id, "fs")
    }

    /// `<snapshots>/<id>/work`: the overlay work directory of active snapshot `id`.
    pub fn work(&self, id: u64) -> PathBuf {
        layer_dir(&self.snapshots_dir, id, "work")
    }
}

fn layer_dir(snapshots: &Path, id: u64, leaf: &str) -> PathBuf {
    let mut p = snapshots.join(id.to_string());
    p.push(leaf);
    p
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The mounts of snapshot `id` of `kind` (Active or View; anything but Active is treated
/// as read-only) whose parents are `parent_ids`, nearest first. `volatile` adds the
/// `volatile` option to an active overlay (the caller checked the label and the kernel).
/// `idmap` (`uidmap=…`, `gidmap=…`) goes first on every mount, binds included, as
/// containerd 2.x's overlay puts it.
pub fn build_mounts(
    s: &MountSettings,
    kind: Kind,
    id: u64,
    parent_ids: &[u64],
    volatile: bool,
    idmap: &[String],
) -> Vec<Mount> {
    let active = kind == Kind::Active;
    if parent_ids.is_empty() {
        let mode = if active { "rw" } else { "ro" };
        return vec![bind(path_str(&s.upper(id)), mode, idmap)];
    }
    if !active && parent_ids.len() == 1 {
        // A read-only overlay needs two lower layers; one parent is just its layer.
        return vec![bind(path_str(&s.upper(parent_ids[0])), "ro", idmap)];
    }
    let mut options = Vec::with_capacity(8 + idmap.len() + s.extra_options.len());
    options.extend(idmap.iter().cloned());
    if s.index_off {
        options.push("index=off".to_string());
    }
    if s.userxattr {
        options.push("userxattr".to_string());
    }
    if s.redirect_dir {
        options.push("redirect_dir=on".to_string());
    }
    if active {
        options.push(format!("workdir={}", path_str(&s.work(id))));
        options.push(format!("upperdir={}", path_str(&s.upper(id))));
        if volatile {
            options.push("volatile".to_string());
        }
    }
    options.push(lowerdir(s, parent_ids));
    options.extend(s.extra_options.iter().cloned());
    vec![Mount::new("overlay", "overlay", options)]
}

fn bind(source: String, mode: &str, idmap: &[String]) -> Mount {
    let mut options = idmap.to_vec();
    options.extend([mode.to_string(), "rbind".to_string()]);
    Mount::new("bind", source, options)
}

fn lowerdir(s: &MountSettings, parent_ids: &[u64]) -> String {
    let dir = path_str(&s.snapshots_dir);
    // One allocation for the whole list: a 500-layer chain is one string of ~20 KB.
    let mut out = String::with_capacity(9 + parent_ids.len() * (dir.len() + 8));
    out.push_str("lowerdir=");
    for (i, id) in parent_ids.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&dir);
        out.push('/');
        out.push_str(&id.to_string());
        out.push_str("/fs");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        index_off: bool,
        userxattr: bool,
        redirect_dir: bool,
        extra: &[&str],
    ) -> MountSettings {
        MountSettings {
            snapshots_dir: "/r/snapshots".into(),
            index_off,
            userxattr,
            redirect_dir,
            extra_options: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    struct Case {
        name: &'static str,
        s: MountSettings,
        kind: Kind,
        id: u64,
        parents: &'static [u64],
        volatile: bool,
        want_kind: &'static str,
        want_source: &'static str,
        want: &'static [&'static str],
    }

    #[test]
    fn mount_shapes_and_option_order() {
        let plain = settings(false, false, false, &[]);
        let all = settings(true, true, true, &["nosuid", "metacopy=off"]);
        let cases = [
            Case {
                name: "active root: rw bind, no overlay options even when configured",
                s: all.clone(),
                kind: Kind::Active,
                id: 1,
                parents: &[],
                volatile: true,
                want_kind: "bind",
                want_source: "/r/snapshots/1/fs",
                want: &["rw", "rbind"],
            },
            Case {
                name: "view root: ro bind",
                s: all.clone(),
                kind: Kind::View,
                id: 2,
                parents: &[],
                volatile: false,
                want_kind: "bind",
                want_source: "/r/snapshots/2/fs",
                want: &["ro", "rbind"],
            },
            Case {
                name: "view of one parent: ro bind of the parent's layer",
                s: all.clone(),
                kind: Kind::View,
                id: 9,
                parents: &[4],
                volatile: true,
                want_kind: "bind",
                want_source: "/r/snapshots/4/fs",
                want: &["ro", "rbind"],
            },
            Case {
                name: "active on parents, nothing extra",
                s: plain.clone(),
                kind: Kind::Active,
                id: 5,
                parents: &[3, 2, 1],
                volatile: false,
                want_kind: "overlay",
                want_source: "overlay",
                want: &[
                    "workdir=/r/snapshots/5/work",
                    "upperdir=/r/snapshots/5/fs",
                    "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs:/r/snapshots/1/fs",
                ],
            },
            Case {
                name: "active with index=off",
                s: settings(true, false, false, &[]),
                kind: Kind::Active,
                id: 5,
                parents: &[3],
                volatile: false,
                want_kind: "overlay",
                want_source: "overlay",
                want: &[
                    "index=off",
                    "workdir=/r/snapshots/5/work",
                    "upperdir=/r/snapshots/5/fs",
                    "lowerdir=/r/snapshots/3/fs",
                ],
            },
            Case {
                name: "active with index=off and userxattr",
                s: settings(true, true, false, &[]),
                kind: Kind::Active,
                id: 5,
                parents: &[3],
                volatile: false,
                want_kind: "overlay",
                want_source: "overlay",
                want: &[
                    "index=off",
                    "userxattr",
                    "workdir=/r/snapshots/5/work",
                    "upperdir=/r/snapshots/5/fs",
                    "lowerdir=/r/snapshots/3/fs",
                ],
            },
            Case {
                name: "active with userxattr only",
                s: settings(false, true, false, &[]),
                kind: Kind::Active,
                id: 5,
                parents: &[3],
                volatile: false,
                want_kind: "overlay",
                want_source: "overlay",
                want: &[
                    "userxattr",
                    "workdir=/r/snapshots/5/work",
                    "upperdir=/r/snapshots/5/fs",
                    "lowerdir=/r/snapshots/3/fs",
                ],
            },
            Case {
                name: "active with redirect_dir",
                s: settings(true, false, true, &[]),
                kind: Kind::Active,
                id: 5,
                parents: &[3],
                volatile: false,
                want_kind: "overlay",
                want_source: "overlay",
                want: &[
                    "index=off",
                    "redirect_dir=on",
                    "workdir=/r/snapshots/5/work",
                    "upperdir=/r/snapshots/5/fs",
                    "lowerdir=/r/snapshots/3/fs",
                ],
            },
            Case {
                name: "active volatile",
                s: settings(true, false, false, &[]),
                kind: Kind::Active,
                id: 5,
                parents: &[3],
                volatile: true,
                want_kind: "overlay",
                want_source: "overlay",
                want: &[
                    "index=off",
                    "workdir=/r/snapshots/5/work",
                    "upperdir=/r/snapshots/5/fs",
                    "volatile",
                    "lowerdir=/r/snapshots/3/fs",
                ],
            },
            Case {
                name: "active with everything: extra options after lowerdir",
                s: all.clone(),
                kind: Kind::Active,
                id: 7,
                parents: &[6, 2],
                volatile: true,
                want_kind: "overlay",
                want_source: "overlay",
                want: &[
                    "index=off",
                    "userxattr",
                    "redirect_dir=on",
                    "workdir=/r/snapshots/7/work",
                    "upperdir=/r/snapshots/7/fs",
                    "volatile",
                    "lowerdir=/r/snapshots/6/fs:/r/snapshots/2/fs",
                    "nosuid",
                    "metacopy=off",
                ],
            },
            Case {
                name: "view of two parents: lowerdir only",
                s: plain.clone(),
                kind: Kind::View,
                id: 8,
                parents: &[6, 2],
                volatile: false,
                want_kind: "overlay",
                want_source: "overlay",
                want: &["lowerdir=/r/snapshots/6/fs:/r/snapshots/2/fs"],
            },
            Case {
                name: "view of two parents with everything: never volatile, no upper",
                s: all.clone(),
                kind: Kind::View,
                id: 8,
                parents: &[6, 2],
                volatile: true,
                want_kind: "overlay",
                want_source: "overlay",
                want: &[
                    "index=off",
                    "userxattr",
                    "redirect_dir=on",
                    "lowerdir=/r/snapshots/6/fs:/r/snapshots/2/fs",
                    "nosuid",
                    "metacopy=off",
                ],
            },
        ];
        for c in cases {
            let got = build_mounts(&c.s, c.kind, c.id, c.parents, c.volatile, &[]);
            assert_eq!(got.len(), 1, "{}", c.name);
            assert_eq!(got[0].kind, c.want_kind, "{}", c.name);
            assert_eq!(got[0].source, c.want_source, "{}", c.name);
            assert_eq!(got[0].options, c.want, "{}", c.name);
        }
    }

    #[test]
    fn idmap_options_come_first_on_every_shape() {
        let mut s = MountSettings::new("/r/snapshots");
        s.index_off = true;
        let idmap = [
            "uidmap=0:100000:65536".to_string(),
            "gidmap=0:100000:65536".to_string(),
        ];
        let cases: &[(Kind, &[u64], &[&str])] = &[
            (Kind::Active, &[], &["rw", "rbind"]),
            (Kind::View, &[], &["ro", "rbind"]),
            (Kind::View, &[2], &["ro", "rbind"]),
            (
                Kind::View,
                &[3, 2],
                &["index=off", "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs"],
            ),
            (
                Kind::Active,
                &[2],
                &[
                    "index=off",
                    "workdir=/r/snapshots/7/work",
                    "upperdir=/r/snapshots/7/fs",
                    "lowerdir=/r/snapshots/2/fs",
                ],
            ),
        ];
        for (kind, parents, rest) in cases {
            let m = build_mounts(&s, *kind, 7, parents, false, &idmap);
            let mut want: Vec<&str> = idmap.iter().map(String::as_str).collect();
            want.extend(rest.iter());
            assert_eq!(m[0].options, want, "{kind:?} on {parents:?}");
        }
    }

    #[test]
    fn deep_chain_keeps_every_layer_nearest_first() {
        let s = MountSettings::new("/r/snapshots");
        let parents: Vec<u64> = (1..=500).rev().collect();
        let m = build_mounts(&s, Kind::Active, 501, &parents, false, &[]);
        let lower = m[0]
            .options
            .last()
            .unwrap()
            .strip_prefix("lowerdir=")
            .unwrap();
        let dirs: Vec<&str> = lower.split(':').collect();
        assert_eq!(dirs.len(), 500);
        assert_eq!(dirs[0], "/r/snapshots/500/fs");
        assert_eq!(dirs[499], "/r/snapshots/1/fs");
        // Every layer shares one directory, so relative lowerdirs are "<id>/fs".
        let (common, rel) = snapshot_core::mount::relative_overlay_data(&m[0].options).unwrap();
        assert_eq!(common, Path::new("/r/snapshots"));
        assert!(
            rel.len() < 4096,
            "500 relative layers fit one page: {} bytes",
            rel.len()
        );
    }
}
