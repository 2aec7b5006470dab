//! Conversions between `snapshot-core`'s types and the wire types, and the mapping of
//! error kinds to gRPC status codes.
//!
//! The mapping is containerd's `errdefs.ToGRPC` / `FromGRPC` (containerd 1.6
//! `errdefs/grpc.go`), so containerd's proxy client turns a status back into the error
//! class the backend returned:
//!
//! | [`ErrorKind`] | gRPC code |
//! |---|---|
//! | NotFound | NotFound |
//! | AlreadyExists | AlreadyExists |
//! | FailedPrecondition | FailedPrecondition |
//! | InvalidArgument | InvalidArgument |
//! | NotImplemented | Unimplemented |
//! | Unavailable | Unavailable |
//! | Unknown | Unknown |

use std::time::SystemTime;

use snapshots::{Error, ErrorKind, Info, Kind, Mount, Usage};
use tonic::{Code, Status};

use crate::proto::{snapshots as pb, types};

/// The gRPC code containerd's `errdefs.ToGRPC` gives an error of `kind`.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotImplemented => Code::Unimplemented,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Unknown => Code::Unknown,
    }
}

/// The error kind containerd's `errdefs.FromGRPC` gives a status `code`.
pub fn kind_of(code: Code) -> ErrorKind {
    match code {
        Code::NotFound => ErrorKind::NotFound,
        Code::AlreadyExists => ErrorKind::AlreadyExists,
        Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        Code::InvalidArgument => ErrorKind::InvalidArgument,
        Code::Unimplemented => ErrorKind::NotImplemented,
        Code::Unavailable => ErrorKind::Unavailable,
        _ => ErrorKind::Unknown,
    }
}

/// The status sent for `err`: its code by kind, and the full message (which ends in the
/// class, `": not found"`, as containerd's errors do; its client strips that suffix).
pub fn to_status(err: &Error) -> Status {
    Status::new(code_of(err.kind()), err.to_string())
}

/// The error a client makes of a status: the kind by code and the message without the
/// class suffix the server appended (containerd's `rebaseMessage`).
pub fn from_status(status: &Status) -> Error {
    let kind = kind_of(status.code());
    let msg = status.message();
    let suffix = format!(": {}", kind.as_str());
    let msg = msg.strip_suffix(suffix.as_str()).unwrap_or(msg);
    let msg = if msg.is_empty() { kind.as_str() } else { msg };
    Error::new(kind, msg.to_string())
}

/// The wire kind of `kind`.
pub fn kind_to_proto(kind: Kind) -> pb::Kind {
    match kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    }
}

/// The kind of a wire value; like containerd's service, anything that is not VIEW or
/// ACTIVE counts as COMMITTED.
pub fn kind_from_proto(kind: i32) -> Kind {
    match pb::Kind::try_from(kind) {
        Ok(pb::Kind::View) => Kind::View,
        Ok(pb::Kind::Active) => Kind::Active,
        _ => Kind::Committed,
    }
}

/// The wire form of `info`.
pub fn info_to_proto(info: &Info) -> pb::Info {
    pb::Info {
        name: info.name.clone(),
        parent: info.parent.clone(),
        kind: kind_to_proto(info.kind) as i32,
        created_at: Some(info.created.into()),
        updated_at: Some(info.updated.into()),
        labels: info
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// The core form of a wire `Info`; missing or out-of-range times become the epoch.
pub fn info_from_proto(info: pb::Info) -> Info {
    Info {
        kind: kind_from_proto(info.kind),
        name: info.name,
        parent: info.parent,
        labels: info.labels.into_iter().collect(),
        created: time_from_proto(info.created_at),
        updated: time_from_proto(info.updated_at),
    }
}

fn time_from_proto(ts: Option<prost_types::Timestamp>) -> SystemTime {
    ts.and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The wire form of a mount (with no target: the caller picks it).
pub fn mount_to_proto(m: &Mount) -> types::Mount {
    types::Mount {
        r#type: m.kind.clone(),
        source: m.source.clone(),
        target: String::new(),
        options: m.options.clone(),
    }
}

/// The core form of a wire mount; the target is dropped.
pub fn mount_from_proto(m: types::Mount) -> Mount {
    Mount::new(m.r#type, m.source, m.options)
}

/// The wire form of a usage figure; sizes past `i64::MAX` saturate.
pub fn usage_to_proto(u: Usage) -> pb::UsageResponse {
    pb::UsageResponse {
        size: i64::try_from(u.size).unwrap_or(i64::MAX),
        inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
    }
}

/// An audit's report as the `Checker` service sends it.
pub fn fsck_to_proto(
    r: &snapshots::snapshot_core::fsck::FsckReport,
) -> crate::proto::collector::FsckResponse {
    use crate::proto::collector as c;
    let text = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    c::FsckResponse {
        backend: r.backend.clone(),
        root: r.root.display().to_string(),
        records: r.records as u64,
        directories: r.directories as u64,
        mounts: r.mounts as u64,
        findings: r
            .findings
            .iter()
            .map(|f| c::Finding {
                kind: f.kind.as_str().into(),
                path: text(&f.path),
                key: f.key.clone().unwrap_or_default(),
                id: f.id,
                size: f.usage.map(|u| u.size as i64),
                inodes: f.usage.map(|u| u.inodes as i64),
                owner: f.owner.clone().unwrap_or_default(),
                detail: f.detail.clone(),
                repaired: f.repaired,
            })
            .collect(),
        pending: r
            .pending
            .iter()
            .map(|p| c::PendingTree {
                path: p.path.display().to_string(),
                size: p.usage.map(|u| u.size as i64),
                inodes: p.usage.map(|u| u.inodes as i64),
                deleted: p.deleted,
            })
            .collect(),
    }
}

/// The report a `Checker` service sent. A kind this client does not know reads as an
/// unknown entry, its name kept in the detail.
pub fn fsck_from_proto(
    r: crate::proto::collector::FsckResponse,
) -> snapshots::snapshot_core::fsck::FsckReport {
    use snapshots::snapshot_core::fsck::{Finding, FindingKind, FsckReport, Pending};
    let usage = |size: Option<i64>, inodes: Option<i64>| {
        Some(Usage {
            size: size?.max(0) as u64,
            inodes: inodes?.max(0) as u64,
        })
    };
    let some = |s: String| (!s.is_empty()).then_some(s);
    FsckReport {
        backend: r.backend,
        root: r.root.into(),
        records: r.records as usize,
        directories: r.directories as usize,
        mounts: r.mounts as usize,
        findings: r
            .findings
            .into_iter()
            .map(|f| {
                let (kind, detail) = match FindingKind::parse(&f.kind) {
                    Some(k) => (k, f.detail),
                    None => (
                        FindingKind::UnknownEntry,
                        format!("{}: {}", f.kind, f.detail),
                    ),
                };
                Finding {
                    kind,
                    path: some(f.path).map(Into::into),
                    key: some(f.key),
                    id: f.id,
                    usage: usage(f.size, f.inodes),
                    owner: some(f.owner),
                    detail,
                    repaired: f.repaired,
                }
            })
            .collect(),
        pending: r
            .pending
            .into_iter()
            .map(|p| Pending {
                path: p.path.into(),
                usage: usage(p.size, p.inodes),
                deleted: p.deleted,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshots::labels;
    use std::time::Duration;

    #[test]
    fn every_kind_round_trips_through_a_status() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::InvalidArgument,
            ErrorKind::NotImplemented,
            ErrorKind::Unavailable,
            ErrorKind::Unknown,
        ] {
            let err = Error::new(kind, "snapshot \"k\"");
            let st = to_status(&err);
            assert_eq!(kind_of(st.code()), kind);
            let back = from_status(&st);
            assert_eq!(back.kind(), kind);
            assert_eq!(back.message(), "snapshot \"k\"");
        }
        assert_eq!(code_of(ErrorKind::NotImplemented), Code::Unimplemented);
        assert_eq!(kind_of(Code::Internal), ErrorKind::Unknown);
    }

    #[test]
    fn kinds_map_like_containerd() {
        assert_eq!(kind_to_proto(Kind::View) as i32, 1);
        assert_eq!(kind_to_proto(Kind::Active) as i32, 2);
        assert_eq!(kind_to_proto(Kind::Committed) as i32, 3);
        assert_eq!(kind_from_proto(0), Kind::Committed);
        assert_eq!(kind_from_proto(99), Kind::Committed);
        assert_eq!(kind_from_proto(1), Kind::View);
    }

    #[test]
    fn info_round_trips() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let info = Info {
            kind: Kind::Active,
            name: "ns/1/key".into(),
            parent: "ns/0/parent".into(),
            labels: labels([("a", "1"), ("containerd.io/gc.root", "x")]),
            created: t,
            updated: t + Duration::from_secs(1),
        };
        assert_eq!(info_from_proto(info_to_proto(&info)), info);
    }

    #[test]
    fn mount_round_trips_without_target() {
        let m = Mount::new(
            "overlay",
            "overlay",
            vec!["index=off".into(), "lowerdir=/a".into()],
        );
        let p = mount_to_proto(&m);
        assert_eq!(p.r#type, "overlay");
        assert_eq!(p.target, "");
        assert_eq!(mount_from_proto(p), m);
    }
}
