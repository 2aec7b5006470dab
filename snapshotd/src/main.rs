//! snapshotd: serves containerd's snapshots API on a unix socket. See `snapshotd --help`.

use clap::Parser;
use snapshotd::config::{Config, Flags};

fn main() {
    let flags = Flags::parse();
    let config = match Config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("snapshotd: {e}");
            std::process::exit(2);
        }
    };
    if let Some(release) = &flags.print_containerd_config {
        print_containerd_config(release, &flags.containerd_name, &config);
        return;
    }
    snapshotd::logger::init(config.log_level);
    if let Err(e) = snapshotd::server::run(config) {
        log::error!("{e}");
        std::process::exit(1);
    }
}

/// `--print-containerd-config RELEASE`: the lines for containerd's config.toml.
fn print_containerd_config(release: &str, name: &str, config: &Config) {
    use snapshotd::containerd::{ProxyEntry, Release};
    let release = Release::parse(release).unwrap_or_else(|e| {
        eprintln!("snapshotd: --print-containerd-config: {e}");
        std::process::exit(2);
    });
    // Without a configured backend, the one the root holds; never a probe (it writes).
    let recorded = snapshots::snapshot_core::lifecycle::recorded_backend(&config.root)
        .ok()
        .flatten()
        .and_then(|n| n.parse().ok());
    let backend = config.backend.or(recorded).unwrap_or_else(|| {
        eprintln!(
            "snapshotd: no --backend and no store at {}: printing overlay's capabilities \
             (pass --backend to choose)",
            config.root.display()
        );
        snapshots::Backend::Overlay
    });
    let capabilities = backend.capabilities();
    let entry = ProxyEntry {
        name,
        address: &config.address,
        capabilities: &capabilities,
        root: &config.root,
    };
    print!("{}", snapshotd::containerd::config(release, &entry));
}
