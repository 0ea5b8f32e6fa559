//! AF_UNIX SOCK_SEQPACKET sockets (the standard library has stream and datagram only):
//! listen, accept with the peer's credentials, connect, send and receive whole datagrams.

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, fs::PermissionsExt},
    },
    path::Path,
};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= a.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {} too long (or with a NUL)", path.display()),
        ));
    }
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((a, len as libc::socklen_t))
}

fn seqpacket(nonblock: bool) -> io::Result<OwnedFd> {
    let flags =
        libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: socket takes integers; the result is checked.
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, flags, 0) })?;
    // SAFETY: a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds and listens at `path` (mode 0600, in a directory created 0700 when missing). A
/// socket file left by a dead daemon is replaced; one a live daemon answers on is refused.
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if path.exists() {
        if connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{}: another daemon answers on this control socket",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let fd = seqpacket(true)?;
    let (a, len) = sockaddr(path)?;
    // Created 0600 from the start: no moment where another user could connect.
    // SAFETY: umask takes and returns a mode; restored right after bind.
    let old = unsafe { libc::umask(0o177) };
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    cvt(r)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // SAFETY: listen on our socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
    Ok(fd)
}

/// Accepts one connection (non-blocking) and the uid of the process at the other end.
pub fn accept(listener: RawFd) -> io::Result<(OwnedFd, u32)> {
    // SAFETY: accept4 on our listening socket without an address buffer.
    let fd = cvt(unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: a new fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ucred is plain data; all zeros is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok((fd, cred.uid))
}

/// A blocking connection to the daemon at `path`.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket(false)?;
    let (a, len) = sockaddr(path)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) })?;
    Ok(fd)
}

/// Sends one datagram.
pub fn send(fd: RawFd, d: &[u8]) -> io::Result<()> {
    // SAFETY: reads `d.len()` bytes from a live slice.
    let n = unsafe { libc::send(fd, d.as_ptr().cast(), d.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram into `buf`; returns its real length (more than `buf.len()` when it
/// did not fit: the rest is discarded), 0 at end of stream.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: writes at most `buf.len()` bytes into a live buffer; MSG_TRUNC makes the
    // result the datagram's full length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sets a receive timeout on a blocking socket.
pub fn set_recv_timeout(fd: RawFd, t: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: passes a live timeval of its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// The default control socket: beside the state file, `.ctl` for `.state`.
pub fn default_path(state: &Path) -> std::path::PathBuf {
    state.with_extension("ctl")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_keep_their_bounds_and_oversized_ones_are_measured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.ctl");
        let l = listen(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let c = connect(&path).unwrap();
        let (s, uid) = accept(l.as_raw_fd()).unwrap();
        // SAFETY: getuid has no preconditions.
        assert_eq!(uid, unsafe { libc::getuid() });
        send(c.as_raw_fd(), b"one").unwrap();
        send(c.as_raw_fd(), &vec![7u8; 20000]).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(recv(s.as_raw_fd(), &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"one");
        assert_eq!(recv(s.as_raw_fd(), &mut buf).unwrap(), 20000);
        drop(c);
        assert_eq!(recv(s.as_raw_fd(), &mut buf).unwrap(), 0);
        // A second daemon on the same path is refused while the first listens.
        assert_eq!(listen(&path).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        // A dead daemon's socket file is replaced.
        drop((s, l));
        let _l = listen(&path).unwrap();
    }
}
