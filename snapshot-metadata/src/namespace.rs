//! containerd's namespace names (`namespaces.NamespaceRequired`, `identifiers.Validate`).

use std::sync::OnceLock;

use regex::Regex;
use snapshot_core::keyspace::truncate_for_message;
use snapshot_core::{Error, Result};

/// The longest namespace name, in bytes.
pub const MAX_NAMESPACE: usize = 76;

const PATTERN: &str = r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$";

/// Checks a namespace name as containerd does: required (FailedPrecondition when empty),
/// at most [`MAX_NAMESPACE`] bytes, and runs of letters and digits joined by single `.`,
/// `_` or `-` (InvalidArgument otherwise).
///
/// ```
/// use snapshot_metadata::validate_namespace;
/// assert!(validate_namespace("k8s.io").is_ok());
/// assert!(validate_namespace("").is_err());
/// assert!(validate_namespace("a..b").is_err());
/// ```
///
/// # Errors
/// FailedPrecondition for an empty name; InvalidArgument for one that is too long or
/// does not match.
pub fn validate_namespace(ns: &str) -> Result<()> {
    static RE: OnceLock<Regex> = OnceLock::new();
    if ns.is_empty() {
        return Err(Error::failed_precondition(
            "namespace is required: name one (containerd's clients send it in the \
             containerd-namespace header)",
        ));
    }
    if ns.len() > MAX_NAMESPACE {
        return Err(Error::invalid_argument(format!(
            "namespace validation: identifier {:?} greater than maximum length \
             ({MAX_NAMESPACE} characters)",
            truncate_for_message(ns)
        )));
    }
    let re = RE.get_or_init(|| Regex::new(PATTERN).expect("a valid pattern"));
    if !re.is_match(ns) {
        return Err(Error::invalid_argument(format!(
            "namespace validation: identifier {ns:?} must match {PATTERN}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot_core::ErrorKind;

    #[test]
    fn names_follow_containerds_identifier_rules() {
        for ok in ["default", "k8s.io", "a", "A-b_c.d", "0", &"x".repeat(76)] {
            assert!(validate_namespace(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            validate_namespace("").unwrap_err().kind(),
            ErrorKind::FailedPrecondition
        );
        for bad in [
            "-a",
            "a-",
            "a..b",
            "a b",
            "a/b",
            ".",
            "é",
            "a__b",
            &"x".repeat(77),
        ] {
            let e = validate_namespace(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
            assert!(e.to_string().contains("identifier"), "{e}");
        }
    }
}
