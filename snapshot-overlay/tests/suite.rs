//! containerd's snapshotter conformance suite, run twice on overlay:
//! - `overlay_sync`: synchronous remove and the default options (`redirect_dir` off, as
//!   containerd), so the suite's Rename case checks that renaming a lower directory fails
//!   with EXDEV;
//! - `overlay_async`: asynchronous remove (the default) with the `redirect_dir` opt-in, so
//!   the Rename case renames a lower directory for real.
#![cfg(target_os = "linux")]

use std::path::Path;

use snapshot_overlay::{OverlayConfig, OverlaySnapshotter};
use snapshot_testsuite::{snapshotter_suite, Capabilities, Harness};

struct Overlay {
    async_remove: bool,
}

impl Harness for Overlay {
    fn name(&self) -> &str {
        if self.async_remove {
            "overlay (asynchronous remove)"
        } else {
            "overlay (synchronous remove)"
        }
    }

    fn check_available(&self) -> snapshot_core::Result<()> {
        Ok(snapshot_overlay::probe::check_overlay_available()?)
    }

    fn open(&self, root: &Path) -> snapshot_core::Result<Box<dyn snapshot_core::Snapshotter>> {
        let config = OverlayConfig {
            options: snapshot_core::lifecycle::Options {
                async_remove: Some(self.async_remove),
                ..Default::default()
            },
            redirect_dir: self.async_remove,
            ..OverlayConfig::default()
        };
        Ok(Box::new(OverlaySnapshotter::open(root, config)?))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            deferred_remove: self.async_remove,
            rename_lower_dir: self.async_remove,
            rebase: true,
        }
    }
}

snapshotter_suite!(
    overlay_sync,
    Overlay {
        async_remove: false
    }
);
snapshotter_suite!(overlay_async, Overlay { async_remove: true });
