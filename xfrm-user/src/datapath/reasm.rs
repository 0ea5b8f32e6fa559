//! Outer fragments. The outside XDP program passes fragments of ESP and AH to the kernel
//! (the worker cannot reassemble), which reassembles them but has no SA of ours and no ESP/AH
//! handler: alone it would drop the datagram and answer ICMP protocol unreachable. A raw
//! socket per protocol and family takes the reassembled datagram instead (raw sockets see
//! every locally delivered packet of their protocol, after reassembly), and the worker runs
//! it through the same input path as a redirected frame.
//!
//! Only what XDP did not redirect reaches the kernel: the reassembled datagrams, and ESP/AH
//! with an SPI of no SA of ours (then counted XfrmInNoStates, as the kernel would). ESP in
//! UDP (NAT-T) fragments are not taken: a UDP socket on the NAT-T port would compete with an
//! IKE daemon's.
//!
//! IPv4 raw sockets deliver the IP header; IPv6 ones only the payload, so the header is
//! rebuilt from the ancillary data (source, destination, hop limit, traffic class; the flow
//! label is not reported and plays no part in input).

use std::{
    io,
    net::Ipv6Addr,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use anyhow::{Context, Result};

use super::sys::{setsockopt_int, socket};
use crate::wire::ipv6::Ipv6Packet;

const IPPROTO_ESP: i32 = 50;
const IPPROTO_AH: i32 = 51;
const IPV6_HEADER_LEN: usize = 40;

/// The raw sockets (ESP and AH, IPv4 and IPv6 where the host has it).
pub struct Reassembled {
    socks: Vec<RawSock>,
}

struct RawSock {
    fd: OwnedFd,
    v6: bool,
    proto: u8,
}

fn raw_socket(family: i32, proto: i32) -> io::Result<OwnedFd> {
    socket(
        family,
        libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        proto,
    )
}

impl Reassembled {
    /// Opens the sockets in the calling thread's network namespace. IPv6 ones are skipped
    /// when the host has no IPv6.
    pub fn open() -> Result<Self> {
        let mut socks = Vec::new();
        for proto in [IPPROTO_ESP, IPPROTO_AH] {
            let s = raw_socket(libc::AF_INET, proto)
                .with_context(|| format!("raw IPv4 socket for protocol {proto}"))?;
            socks.push(RawSock {
                fd: s,
                v6: false,
                proto: proto as u8,
            });
            match raw_socket(libc::AF_INET6, proto) {
                Ok(s) => {
                    for opt in [
                        libc::IPV6_RECVPKTINFO,
                        libc::IPV6_RECVHOPLIMIT,
                        libc::IPV6_RECVTCLASS,
                    ] {
                        setsockopt_int(&s, libc::IPPROTO_IPV6, opt, 1)
                            .with_context(|| format!("raw IPv6 socket option {opt}"))?;
                    }
                    socks.push(RawSock {
                        fd: s,
                        v6: true,
                        proto: proto as u8,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("raw IPv6 socket for {proto}"));
                }
            }
        }
        Ok(Self { socks })
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.socks.iter().map(|s| s.fd.as_raw_fd())
    }

    /// The next datagram of socket `i` as a whole IP packet at the start of `buf`.
    pub fn read(&self, i: usize, buf: &mut [u8]) -> io::Result<Datagram> {
        let Some(sock) = self.socks.get(i) else {
            return Ok(Datagram::None);
        };
        if !sock.v6 {
            return recv(sock.fd.as_raw_fd(), buf);
        }
        if buf.len() <= IPV6_HEADER_LEN {
            return Ok(Datagram::Dropped);
        }
        let (header, payload) = buf.split_at_mut(IPV6_HEADER_LEN);
        // SAFETY: sockaddr_in6 is plain data; all zeroes is a valid value.
        let mut src: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        let mut control = [0u64; 16];
        // SAFETY: msghdr is plain data; every pointer set below points into live locals.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut src as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: recvmsg into the buffers described by msg.
        let n = unsafe { libc::recvmsg(sock.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        let Some(n) = received(n)? else {
            return Ok(Datagram::None);
        };
        if msg.msg_flags & libc::MSG_TRUNC != 0 || n > u16::MAX as usize {
            return Ok(Datagram::Dropped);
        }
        let (mut dst, mut hop, mut tclass) = (None, 64u8, 0u8);
        // SAFETY: walking the control buffer the kernel filled, with the libc macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                if (*c).cmsg_level == libc::IPPROTO_IPV6 {
                    match (*c).cmsg_type {
                        libc::IPV6_PKTINFO => {
                            let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                            dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                        }
                        libc::IPV6_HOPLIMIT => {
                            hop = std::ptr::read_unaligned(data as *const i32) as u8;
                        }
                        libc::IPV6_TCLASS => {
                            tclass = std::ptr::read_unaligned(data as *const i32) as u8;
                        }
                        _ => {}
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let Some(dst) = dst else {
            return Ok(Datagram::Dropped);
        };
        let mut h = Ipv6Packet::new_unchecked(header);
        h.set_version_tc_flow(tclass, 0);
        h.set_payload_len(n as u16);
        h.set_next_header(sock.proto);
        h.set_hop_limit(hop);
        h.set_src_addr(Ipv6Addr::from(src.sin6_addr.s6_addr));
        h.set_dst_addr(dst);
        Ok(Datagram::Packet(IPV6_HEADER_LEN + n))
    }
}

/// What [`Reassembled::read`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram {
    /// A whole IP packet of this length.
    Packet(usize),
    /// Nothing waiting.
    None,
    /// One was consumed but cannot be used (longer than the frame, or without its
    /// addresses): the caller counts it.
    Dropped,
}

/// One IPv4 datagram, header included, from a raw socket.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    // SAFETY: receives at most buf.len() bytes into buf.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    // MSG_TRUNC: the real length, so a datagram cut short is recognised and dropped.
    Ok(match received(n)? {
        Some(n) if n <= buf.len() => Datagram::Packet(n),
        Some(_) => Datagram::Dropped,
        None => Datagram::None,
    })
}

/// A recv result: Some(length), None when nothing waits, or the error.
fn received(n: isize) -> io::Result<Option<usize>> {
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// A datagram longer than the frame is consumed and reported dropped (the worker counts
    /// it), not cut short; an empty socket is `None`. (A UNIX datagram pair stands in for the
    /// raw socket: recv's MSG_TRUNC works the same on both.)
    #[test]
    fn datagrams_longer_than_the_frame_are_dropped_not_truncated() {
        let mut fds = [0; 2];
        // SAFETY: socketpair(2) into a two-int array.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: two fresh fds we own.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let send = |n: usize| {
            let d = vec![0x45u8; n];
            // SAFETY: sends n bytes from d.
            let r = unsafe { libc::send(a.as_raw_fd(), d.as_ptr().cast(), n, 0) };
            assert_eq!(r, n as isize);
        };
        let mut buf = [0u8; 64];
        send(100);
        send(30);
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), Datagram::Dropped);
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), Datagram::Packet(30));
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), Datagram::None);
    }
}
