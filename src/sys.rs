//! The few system calls mob makes itself rather than through mio or socket2.

use std::io;
use std::os::fd::AsRawFd;

use bytes::BytesMut;

/// `read(2)` into the spare capacity of `buf` (at most `max` bytes), without zeroing it first,
/// and extends `buf` by what was read. `Ok(0)` is end of stream (or no spare capacity, or a
/// `max` of 0: callers make sure of both first).
pub fn read_into(socket: &impl AsRawFd, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = max.min(spare.len());
    let spare = &mut spare[..len];
    // SAFETY: read(2) writes at most `spare.len()` bytes into the spare capacity, which is
    // valid for writes; only the bytes it reports written are then marked initialised.
    let n = unsafe { libc::read(socket.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised `n <= spare.len()` bytes right after the current length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Raises the soft limit on open files to the hard limit, so thousands of sockets work without
/// the user touching `ulimit`. Returns the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` on a socket about to be bound to a source address before it
/// connects, so that `bind` takes the address only and `connect` picks the port.
///
/// # Notes
/// Without it, `bind(IP:0)` reserves an ephemeral port for that address alone, whatever the
/// destination, and skips ports still held in `TIME_WAIT`: one source address then holds about
/// `ip_local_port_range` connections in all. With it, `connect` chooses as it does for an
/// unbound socket: a port is free when the whole four-tuple is, so each destination has the
/// range to itself, and (with `net.ipv4.tcp_tw_reuse`) ports in `TIME_WAIT` may be reused.
pub fn set_bind_address_no_port(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a pointer to a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
