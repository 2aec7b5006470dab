//! snapshots (in progress).
