//! The unified keyspace: what a key and a label may be, and which labels a backend
//! inherits from containerd's metadata layer.
//!
//! Keys, names and parents share one keyspace. Any non-empty string without NUL bytes is a
//! valid key: containerd sends keys with `/`, spaces and absolute paths (`/tmp/x/a`), so
//! none of those are refused. Keys never become paths on disk; backends name directories
//! by internal id.

use crate::error::{Error, Result};
use crate::types::Labels;

/// The most bytes a label's key plus value may hold (containerd's `labels.Validate`).
pub const MAX_LABEL_SIZE: usize = 4096;

/// Labels with this prefix are passed from containerd's metadata layer to backends.
pub const INHERITED_LABEL_PREFIX: &str = "containerd.io/snapshot/";

/// The remote-snapshot target label; also passed to backends.
pub const TARGET_REF_LABEL: &str = "containerd.io/snapshot.ref";

/// The garbage-collection root label.
pub const GC_ROOT_LABEL: &str = "containerd.io/gc.root";

/// Checks a key, name or non-empty parent: it must be non-empty and free of NUL bytes.
///
/// `what` names the argument in the error ("key", "name", "parent").
///
/// # Errors
/// InvalidArgument for an empty key or a key holding a NUL byte.
///
/// ```
/// use snapshot_core::keyspace::validate_key;
/// assert!(validate_key("key", "/tmp/snapshots/with space").is_ok());
/// assert!(validate_key("key", "").is_err());
/// assert!(validate_key("key", "a\0b").is_err());
/// ```
pub fn validate_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid_argument(format!(
            "{what} must not be empty: give the snapshot a name"
        )));
    }
    if let Some(pos) = key.bytes().position(|b| b == 0) {
        return Err(Error::invalid_argument(format!(
            "{what} {:?} holds a NUL byte at offset {pos}: keys must not contain NUL",
            truncate_for_message(key)
        )));
    }
    Ok(())
}

/// Checks every label: the key must not be empty and key plus value must fit
/// [`MAX_LABEL_SIZE`] bytes.
///
/// # Errors
/// InvalidArgument naming the first offending label.
///
/// ```
/// use snapshot_core::{keyspace::validate_labels, labels};
/// assert!(validate_labels(&labels([("a", "b")])).is_ok());
/// assert!(validate_labels(&labels([("a", "x".repeat(4096))])).is_err());
/// ```
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::invalid_argument("label key must not be empty"));
        }
        if k.len() + v.len() > MAX_LABEL_SIZE {
            return Err(Error::invalid_argument(format!(
                "label {:?}: key and value are {} bytes, more than the limit of {MAX_LABEL_SIZE}",
                truncate_for_message(k),
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

/// True for labels that containerd's metadata layer passes on to backends:
/// `containerd.io/snapshot/*` and exactly `containerd.io/snapshot.ref`.
pub fn is_inherited_label(key: &str) -> bool {
    key.starts_with(INHERITED_LABEL_PREFIX) || key == TARGET_REF_LABEL
}

/// The subset of `labels` a backend inherits (containerd's `FilterInheritedLabels`).
pub fn inherited_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| is_inherited_label(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A key shortened for an error message, so a 10 KiB key does not flood a log.
pub fn truncate_for_message(key: &str) -> String {
    const MAX: usize = 256;
    if key.len() <= MAX {
        return key.to_string();
    }
    let mut end = MAX;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...({} bytes)", &key[..end], key.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::types::labels;

    #[test]
    fn keys() {
        for ok in [
            "a",
            "/abs/path",
            "with space",
            "../../etc",
            "ns/1/key",
            &"k".repeat(10240),
        ] {
            validate_key("key", ok).unwrap();
        }
        assert_eq!(
            validate_key("key", "").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let err = validate_key("parent", "x\0y").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("parent"), "{err}");
    }

    #[test]
    fn label_limits() {
        validate_labels(&labels([("k", "v".repeat(MAX_LABEL_SIZE - 1))])).unwrap();
        let err = validate_labels(&labels([("k", "v".repeat(MAX_LABEL_SIZE))])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("\"k\""), "{err}");
        assert_eq!(
            validate_labels(&labels([("", "v")])).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn inheritance() {
        let all = labels([
            ("containerd.io/snapshot/overlay.upperdir", "x"),
            ("containerd.io/snapshot.ref", "sha256:1"),
            ("containerd.io/snapshot.refx", "no"),
            ("containerd.io/gc.root", "no"),
        ]);
        let got = inherited_labels(&all);
        assert_eq!(got.len(), 2);
        assert!(got.contains_key("containerd.io/snapshot.ref"));
        assert!(got.contains_key("containerd.io/snapshot/overlay.upperdir"));
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        let long = "é".repeat(300);
        let t = truncate_for_message(&long);
        assert!(t.ends_with("(600 bytes)"));
    }
}
