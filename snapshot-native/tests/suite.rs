//! containerd's snapshotter conformance suite on the native backend.
#![cfg(target_os = "linux")]

use std::path::Path;

use snapshot_native::{NativeConfig, NativeSnapshotter};
use snapshot_testsuite::{snapshotter_suite, Harness};

struct Native;

impl Harness for Native {
    fn name(&self) -> &str {
        "native"
    }

    fn open(&self, root: &Path) -> snapshot_core::Result<Box<dyn snapshot_core::Snapshotter>> {
        // no_sync: the suite makes thousands of transactions and power loss is not tested.
        let config = NativeConfig {
            no_sync: true,
            ..NativeConfig::default()
        };
        Ok(Box::new(NativeSnapshotter::open(root, config)?))
    }
}

snapshotter_suite!(native, Native);
