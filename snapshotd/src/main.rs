//! snapshotd: serves containerd's snapshots API on a unix socket.

fn main() {
    eprintln!("snapshotd: the daemon is not built yet");
    std::process::exit(1);
}
