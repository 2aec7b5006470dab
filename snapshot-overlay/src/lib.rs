//! snapshot-overlay (in progress).
