//! containerd's snapshotter conformance suite through the metadata layer, in one
//! namespace, over native and over overlay. Remove is deferred to a collection, which the
//! suite's cleanup runs.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::sync::Arc;

use snapshot_core::Snapshotter;
use snapshot_metadata::{Metadata, MetadataOptions};
use snapshot_native::{NativeConfig, NativeSnapshotter};
use snapshot_overlay::{OverlayConfig, OverlaySnapshotter};
use snapshot_testsuite::{snapshotter_suite, Capabilities, Harness};

#[derive(Clone, Copy)]
enum Backend {
    Native,
    Overlay,
}

struct Namespaced(Backend);

impl Harness for Namespaced {
    fn name(&self) -> &str {
        match self.0 {
            Backend::Native => "namespaced native",
            Backend::Overlay => "namespaced overlay",
        }
    }

    fn check_available(&self) -> snapshot_core::Result<()> {
        match self.0 {
            Backend::Native => Ok(()),
            Backend::Overlay => Ok(snapshot_overlay::probe::check_overlay_available()?),
        }
    }

    fn open(&self, root: &Path) -> snapshot_core::Result<Box<dyn Snapshotter>> {
        let backend: Arc<dyn Snapshotter> = match self.0 {
            Backend::Native => {
                let config = NativeConfig {
                    no_sync: true,
                    ..NativeConfig::default()
                };
                Arc::new(NativeSnapshotter::open(&root.join("backend"), config)?)
            }
            Backend::Overlay => Arc::new(OverlaySnapshotter::open(
                &root.join("backend"),
                OverlayConfig::default(),
            )?),
        };
        let md = Metadata::open(
            &root.join("namespaces"),
            backend,
            &MetadataOptions::default(),
        )?;
        Ok(Box::new(md.namespace("default")?))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            deferred_remove: true,
            rename_lower_dir: matches!(self.0, Backend::Native),
            rebase: matches!(self.0, Backend::Overlay),
        }
    }
}

snapshotter_suite!(namespaced_native, Namespaced(Backend::Native));
snapshotter_suite!(namespaced_overlay, Namespaced(Backend::Overlay));
