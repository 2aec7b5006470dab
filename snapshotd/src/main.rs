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
    snapshotd::logger::init(config.log_level);
    if let Err(e) = snapshotd::server::run(config) {
        log::error!("{e}");
        std::process::exit(1);
    }
}
