//! Loopback ports.

use std::io;
use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago: the operating system
/// picks it for a listener that is closed at once. For programs that must be
/// told their port before they start (`korv serve --listen`, `sshd`); a
/// server started in-process binds port 0 instead.
///
/// # Panics
/// No port can be bound on 127.0.0.1.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|err| panic!("no free port on 127.0.0.1: {err}"))
}

/// Like [`free_port`], returning the error instead of panicking.
///
/// # Errors
/// No port can be bound on 127.0.0.1.
pub fn try_free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
