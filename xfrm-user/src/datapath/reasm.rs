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

    /// The next datagram of socket `i` as a whole IP packet at the start of `buf`: Ok(None)
    /// when none waits (or it did not fit `buf`, then it is consumed and dropped).
    pub fn read(&self, i: usize, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(sock) = self.socks.get(i) else {
            return Ok(None);
        };
        if !sock.v6 {
            return recv(sock.fd.as_raw_fd(), buf);
        }
        let Some(payload) = buf.get_mut(IPV6_HEADER_LEN..) else {
            return Ok(None);
        };
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
            return Ok(None);
        };
        if msg.msg_flags & libc::MSG_TRUNC != 0 || n > u16::MAX as usize {
            return Ok(None);
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
            return Ok(None);
        };
        let h = &mut buf[..IPV6_HEADER_LEN];
        h[0] = 0x60 | (tclass >> 4);
        h[1] = tclass << 4;
        h[2] = 0;
        h[3] = 0;
        h[4..6].copy_from_slice(&(n as u16).to_be_bytes());
        h[6] = sock.proto;
        h[7] = hop;
        h[8..24].copy_from_slice(&src.sin6_addr.s6_addr);
        h[24..40].copy_from_slice(&dst.octets());
        Ok(Some(IPV6_HEADER_LEN + n))
    }
}

/// One IPv4 datagram, header included, from a raw socket.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
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
    Ok(received(n)?.filter(|&n| n <= buf.len()))
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
