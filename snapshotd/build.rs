//! Compiles containerd's snapshots and mount protos, snapshotd's own collector proto, and
//! the parts of containerd's API that `snapshotctl fsck --containerd` reads,
//! with protox (pure Rust), so the build needs no system `protoc`.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = Path::new("proto");
    let files = [
        "github.com/containerd/containerd/api/types/mount.proto",
        "github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto",
        "snapshotd/v1/collector.proto",
        // What `snapshotctl fsck --containerd` reads of containerd's own API.
        "github.com/containerd/containerd/api/types/descriptor.proto",
        "github.com/containerd/containerd/api/services/namespaces/v1/namespace.proto",
        "github.com/containerd/containerd/api/services/containers/v1/containers.proto",
        "github.com/containerd/containerd/api/services/leases/v1/leases.proto",
        "github.com/containerd/containerd/api/services/images/v1/images.proto",
        "github.com/containerd/containerd/api/services/content/v1/content.proto",
    ];
    // protox needs no protoc; rerunning when PROTOC changes lets `PROTOC=/nonexistent`
    // prove it.
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-changed=build.rs");
    for f in &files {
        println!("cargo:rerun-if-changed={}", include.join(f).display());
    }
    let fds = protox::compile(files, [include])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
