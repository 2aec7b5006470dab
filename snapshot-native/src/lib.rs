//! snapshot-native (in progress).
