//! systemd's readiness protocol (`sd_notify`): a datagram to `$NOTIFY_SOCKET`.
//!
//! A unit of `Type=notify` waits for `READY=1` before it counts the service as started
//! (so `Before=containerd.service` really means the socket is up), and `STOPPING=1` tells
//! it the shutdown has begun.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `"READY=1"`) to the socket named by `$NOTIFY_SOCKET`. Does
/// nothing, successfully, when the variable is unset (not started by systemd).
///
/// A name starting with `@` is an abstract socket, as systemd's own client reads it.
///
/// # Errors
/// The socket error when the datagram cannot be sent.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = addr.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &addr)?;
    }
    Ok(())
}

/// [`notify`], logging a failure instead of returning it: readiness is a courtesy to the
/// service manager and never a reason to stop serving.
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        log::warn!("sd_notify {state:?} to $NOTIFY_SOCKET failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_the_named_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        // The variable is process-wide; this is the only test in the crate that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        let sent = notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        sent.unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
