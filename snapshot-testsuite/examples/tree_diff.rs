//! Builds two trees with the fstest DSL, changes one, and prints the first difference
//! the comparison finds; then lists the suite's cases.
//!
//! `cargo run -p snapshot-testsuite --example tree_diff`

use snapshot_testsuite::fstest::{
    apply, check_directory_equal, chmod, create_dir, create_file, symlink,
};

fn main() {
    let layer = apply([
        create_dir("/etc", 0o755),
        create_file("/etc/hosts", b"127.0.0.1 localhost\n", 0o644),
        symlink("/etc/hosts", "/hosts"),
    ]);
    let expected = tempfile::tempdir().expect("temp dir");
    let actual = tempfile::tempdir().expect("temp dir");
    layer
        .apply(expected.path())
        .expect("build the expected tree");
    layer
        .then(chmod("/etc/hosts", 0o600))
        .apply(actual.path())
        .expect("build the actual tree");
    match check_directory_equal(expected.path(), actual.path()) {
        Ok(()) => println!("the trees are equal"),
        Err(d) => println!("first difference at {}: {}", d.path, d.what),
    }
    println!("\nthe suite has {} cases:", snapshot_testsuite::CASES.len());
    for c in snapshot_testsuite::CASES {
        println!(
            "  {:<34} {}",
            c.name,
            if c.privileged {
                "mounts (privileged)"
            } else {
                "no mounts"
            }
        );
    }
}
