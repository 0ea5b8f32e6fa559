//! The sockets the tests open to watch or inject traffic: raw ESP, packet sockets on an
//! interface, and the options they set. Each call is made in the calling thread's network
//! namespace (wrap it in `Netns::run`).

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{bail, Result};

/// ETH_P_ALL: every protocol, for a packet socket.
pub const ETH_P_ALL: u16 = 0x0003;
const IPPROTO_ESP: i32 = 50;

/// socket(2), owned.
pub fn socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        bail!(
            "socket({domain}, {ty}, {proto}): {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt(2) of an int option.
pub fn setsockopt_int(fd: &impl AsRawFd, level: i32, opt: i32, v: i32) -> Result<()> {
    // SAFETY: valid fd and an int option.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if r != 0 {
        bail!(
            "setsockopt {level}/{opt}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// SO_RCVTIMEO: a blocking receive returns after `t` without data.
pub fn set_recv_timeout(fd: &OwnedFd, t: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid fd and a timeval option.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if r != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A raw IPPROTO_ESP socket: every ESP packet for this host (IPv4: IP header included;
/// IPv6: from the ESP header), or a way to send ESP. `extra_type` adds to SOCK_RAW
/// (SOCK_NONBLOCK).
pub fn esp_socket(v6: bool, extra_type: i32) -> Result<OwnedFd> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    socket(domain, libc::SOCK_RAW | extra_type, IPPROTO_ESP)
}

/// A packet socket bound to `ifname` for every protocol: each frame it sends or receives,
/// with room for `rcvbuf` bytes of them (forced: root).
pub fn packet_socket(ifname: &str, rcvbuf: i32) -> Result<OwnedFd> {
    let name = CString::new(ifname)?;
    // SAFETY: if_nametoindex on a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("interface {ifname}: {}", std::io::Error::last_os_error());
    }
    let fd = socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        i32::from(ETH_P_ALL.to_be()),
    )?;
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcvbuf)?;
    // SAFETY: zeroed sockaddr_ll is valid; the fields we need are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        bail!(
            "bind AF_PACKET to {ifname}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(fd)
}
