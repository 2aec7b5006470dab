//! containerd's ID-mapping labels: a Prepare or View labelled
//! `containerd.io/snapshot/uidmapping` / `containerd.io/snapshot/gidmapping` asks for a
//! snapshot a container in a user namespace can use without a chowned copy of its image.
//! A value is `<container-id>:<host-id>:<size>[,…]` (containerd's `userns.IDMap` format,
//! OCI's `LinuxIDMapping` order). A backend that idmaps its layers gives the new tree to
//! the host ID of the container's root ([`IdMapping::root`]) and returns the values in
//! `uidmap=` / `gidmap=` mount options, which containerd 2.x's mount code (and
//! [`crate::mount`]) applies as idmapped mounts of the read-only layers.

use crate::{Error, Labels, Result};

/// The label naming the UID mapping of the user namespace a snapshot is for.
pub const UID_MAPPING_LABEL: &str = "containerd.io/snapshot/uidmapping";
/// The label naming the GID mapping of the user namespace a snapshot is for.
pub const GID_MAPPING_LABEL: &str = "containerd.io/snapshot/gidmapping";
/// The mount option carrying a UID mapping (containerd 2.x).
pub const UIDMAP_OPTION: &str = "uidmap=";
/// The mount option carrying a GID mapping (containerd 2.x).
pub const GIDMAP_OPTION: &str = "gidmap=";

/// The first Linux release whose overlay takes idmapped lower layers.
pub const IDMAPPED_OVERLAY_LOWERS: (u32, u32) = (5, 19);

/// Whether the running kernel's overlay takes idmapped lower layers (what containerd's
/// overlay checks before it offers `remap-ids`).
pub fn overlay_idmaps_lowers() -> bool {
    crate::mount::running_kernel().is_some_and(|v| v >= IDMAPPED_OVERLAY_LOWERS)
}

/// IDs are 32-bit and `u32::MAX` is the invalid ID: a range may reach up to it.
const ID_LIMIT: u64 = u32::MAX as u64;
/// The most ranges one user namespace's map holds (the kernel's
/// `UID_GID_MAP_MAX_EXTENTS`).
pub const MAX_RANGES: usize = 340;
/// The identity mapping of every ID, for the side a create left unmapped.
pub const IDENTITY: &str = "0:0:4294967295";

/// One range: container IDs `container..container+size` are host IDs `host..host+size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The first ID inside the namespace.
    pub container: u32,
    /// The ID it is on the host.
    pub host: u32,
    /// How many IDs the range holds (at least one).
    pub size: u32,
}

/// A parsed mapping: its ranges, in the label's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap(pub Vec<IdRange>);

impl IdMap {
    /// Parses `value`, the value of `what` (`label <name>` or `mount option uidmap`,
    /// named in the error).
    ///
    /// # Errors
    /// InvalidArgument naming `what` and the entry for an empty value, an entry that is
    /// not three decimal numbers joined by `:`, a size of 0, or a range past the last
    /// 32-bit ID.
    pub fn parse(what: &str, value: &str) -> Result<IdMap> {
        let bad = |entry: &str, why: &str| {
            Error::invalid_argument(format!(
                "{what}={value:?}: entry {entry:?} {why}; write \
                 <container-id>:<host-id>:<size>[,...] with decimal IDs, e.g. 0:100000:65536"
            ))
        };
        if value.is_empty() {
            return Err(bad(value, "is empty"));
        }
        let mut ranges = Vec::new();
        for entry in value.split(',') {
            let mut nums = [0u64; 3];
            let mut parts = entry.split(':');
            for n in &mut nums {
                let Some(p) = parts.next() else {
                    return Err(bad(entry, "has fewer than three fields"));
                };
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 10 {
                    return Err(bad(entry, "holds a field that is not a decimal ID"));
                }
                *n = p
                    .parse()
                    .map_err(|_| bad(entry, "holds an ID out of range"))?;
            }
            if parts.next().is_some() {
                return Err(bad(entry, "has more than three fields"));
            }
            let [container, host, size] = nums;
            if size == 0 {
                return Err(bad(entry, "maps no IDs (size 0)"));
            }
            if container + size > ID_LIMIT || host + size > ID_LIMIT {
                return Err(bad(entry, "reaches past the last 32-bit ID"));
            }
            ranges.push(IdRange {
                container: container as u32,
                host: host as u32,
                size: size as u32,
            });
        }
        if ranges.len() > MAX_RANGES {
            return Err(Error::invalid_argument(format!(
                "{what}: {} ranges, more than the kernel's {MAX_RANGES} in one user \
                 namespace: merge adjacent ranges",
                ranges.len()
            )));
        }
        // The kernel refuses a map whose ranges overlap on either side.
        for (side, key) in [
            (
                "container",
                (|r: &IdRange| r.container) as fn(&IdRange) -> u32,
            ),
            ("host", |r: &IdRange| r.host),
        ] {
            let mut sorted: Vec<&IdRange> = ranges.iter().collect();
            sorted.sort_by_key(|r| key(r));
            for w in sorted.windows(2) {
                if u64::from(key(w[0])) + u64::from(w[0].size) > u64::from(key(w[1])) {
                    let show = |r: &IdRange| format!("{}:{}:{}", r.container, r.host, r.size);
                    return Err(bad(
                        &show(w[1]),
                        &format!("overlaps {} in its {side} IDs", show(w[0])),
                    ));
                }
            }
        }
        Ok(IdMap(ranges))
    }

    /// The host ID of container ID `id`: the first range holding it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        self.0.iter().find_map(|r| {
            let off = id.checked_sub(r.container)?;
            (off < r.size).then(|| r.host + off)
        })
    }
}

/// The mappings a create asked for: either may be missing (that side is the identity, as
/// containerd's `IDMap` with a nil map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapping {
    /// The UID mapping, with its label's value.
    pub uid: Option<(IdMap, String)>,
    /// The GID mapping, with its label's value.
    pub gid: Option<(IdMap, String)>,
}

impl IdMapping {
    /// The mapping `labels` ask for, or `None` when they hold neither label.
    ///
    /// # Errors
    /// InvalidArgument naming the label for a malformed value, or for a mapping that does
    /// not map the container's root (ID 0), which would own the snapshot's tree.
    pub fn from_labels(labels: &Labels) -> Result<Option<IdMapping>> {
        let parse = |label: &str| -> Result<Option<(IdMap, String)>> {
            let Some(v) = labels.get(label) else {
                return Ok(None);
            };
            let map = IdMap::parse(&format!("label {label}"), v)?;
            if map.to_host(0).is_none() {
                return Err(Error::invalid_argument(format!(
                    "label {label}={v:?} does not map container ID 0, which owns the \
                     snapshot's root: add a range starting at container ID 0, e.g. \
                     0:100000:65536"
                )));
            }
            Ok(Some((map, v.clone())))
        };
        let (uid, gid) = (parse(UID_MAPPING_LABEL)?, parse(GID_MAPPING_LABEL)?);
        Ok((uid.is_some() || gid.is_some()).then_some(IdMapping { uid, gid }))
    }

    /// The host UID and GID of the container's root: who owns a new tree.
    pub fn root(&self) -> (u32, u32) {
        let host =
            |m: &Option<(IdMap, String)>| m.as_ref().map_or(0, |(m, _)| m.to_host(0).unwrap_or(0));
        (host(&self.uid), host(&self.gid))
    }

    /// The mount options (`uidmap=…`, `gidmap=…`) carrying the labels' values, as
    /// containerd 2.x's overlay returns them. Both are always there: a missing side is
    /// the identity ([`IDENTITY`]), since a mount with one of them alone is not idmapped
    /// by containerd's mount code and refused by [`crate::mount::mount_all`].
    pub fn mount_options(&self) -> Vec<String> {
        let value = |m: &Option<(IdMap, String)>| {
            m.as_ref()
                .map_or_else(|| IDENTITY.to_string(), |(_, v)| v.clone())
        };
        vec![
            format!("{UIDMAP_OPTION}{}", value(&self.uid)),
            format!("{GIDMAP_OPTION}{}", value(&self.gid)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{labels, ErrorKind};

    #[test]
    fn ranges_parse_and_map() {
        let m = IdMap::parse(UID_MAPPING_LABEL, "0:100000:1,1:200001:65535").unwrap();
        assert_eq!(m.0.len(), 2);
        assert_eq!(m.to_host(0), Some(100000));
        assert_eq!(m.to_host(1), Some(200001));
        assert_eq!(m.to_host(65535), Some(265535));
        assert_eq!(m.to_host(65536), None);
        let full = IdMap::parse(UID_MAPPING_LABEL, "0:0:4294967295").unwrap();
        assert_eq!(full.to_host(7), Some(7));
    }

    #[test]
    fn malformed_values_name_the_label() {
        for bad in [
            "",
            "0:1000",
            "0:1000:1:2",
            "0:1000:0",
            "a:1000:1",
            "-1:1000:1",
            "0:1000:1,",
            " 0:1000:1",
            "0:4294967295:1",
            "0:1:99999999999",
            "0:100000:65536,0:",
            // Overlapping ranges, on the container side and on the host side.
            "0:100000:65536,0:300000:10",
            "0:100000:10,10:100005:10",
        ] {
            let e = IdMap::parse(GID_MAPPING_LABEL, bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}: {e}");
            assert!(e.to_string().contains(GID_MAPPING_LABEL), "{e}");
        }
    }

    #[test]
    fn at_most_the_kernels_ranges() {
        let ranges = |n: u32| -> String {
            (0..n)
                .map(|i| format!("{i}:{}:1", 100000 + 2 * i))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            IdMap::parse(UID_MAPPING_LABEL, &ranges(340))
                .unwrap()
                .0
                .len(),
            340
        );
        let e = IdMap::parse(UID_MAPPING_LABEL, &ranges(341)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("340"), "{e}");
        // Adjacent ranges do not overlap.
        IdMap::parse(UID_MAPPING_LABEL, "0:100000:10,10:100010:10").unwrap();
    }

    #[test]
    fn labels_give_the_root_owner_and_options() {
        assert_eq!(IdMapping::from_labels(&Labels::new()).unwrap(), None);
        let l = labels([
            (UID_MAPPING_LABEL, "0:100000:65536"),
            (GID_MAPPING_LABEL, "0:200000:65536"),
        ]);
        let m = IdMapping::from_labels(&l).unwrap().unwrap();
        assert_eq!(m.root(), (100000, 200000));
        assert_eq!(
            m.mount_options(),
            ["uidmap=0:100000:65536", "gidmap=0:200000:65536"]
        );
        // One side only: the other is the identity (containerd 2.1+).
        let m = IdMapping::from_labels(&labels([(UID_MAPPING_LABEL, "0:1000:1")]))
            .unwrap()
            .unwrap();
        assert_eq!(m.root(), (1000, 0));
        assert_eq!(
            m.mount_options(),
            ["uidmap=0:1000:1", "gidmap=0:0:4294967295"]
        );
        // Root unmapped.
        let e = IdMapping::from_labels(&labels([(UID_MAPPING_LABEL, "1:1000:10")])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("container ID 0"), "{e}");
    }
}
