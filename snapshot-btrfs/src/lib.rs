//! snapshot-btrfs (in progress).
