//! Start-up chores: the listening socket and the open-files limit.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Socket, Type};

/// Pending connections the kernel may hold for us: as many as it allows. Linux (and the BSDs)
/// cut a larger backlog down to `net.core.somaxconn` (`kern.ipc.somaxconn`) without an error,
/// so an operator expecting bursts of thousands of connects raises that one setting.
const BACKLOG: i32 = i32::MAX;

/// Binds a non-blocking listener with `SO_REUSEADDR`, so a restarted server can bind the port
/// while connections of its previous run linger in `TIME_WAIT`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit this on Linux; each is set again on accept all the same.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Whether an `accept` error means the process or system ran out of descriptors or memory:
/// retrying at once would spin, so accepting pauses for a moment instead.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether an `accept` error concerns only the connection being accepted (it was reset or
/// aborted before we got to it): skip it and accept the next.
pub fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}
