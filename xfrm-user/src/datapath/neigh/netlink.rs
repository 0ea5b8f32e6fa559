//! The rtnetlink codec and a synchronous socket: what `ip link show`, `ip route get` and
//! `ip neigh get` ask the kernel, and the RTM_NEWNEIGH with NTF_USE that makes it resolve.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{Context, Result};

use netlink_packet_core::{Emitable, NlaBuffer, NlasIterator, ParseableParametrized};
use netlink_packet_route::{
    link::{LinkAttribute, LinkHeader, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourHeader, NeighbourMessage,
    },
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteLwEnCapType, RouteMessage, RouteMetric,
        RouteType, RouteVia,
    },
    AddressFamily,
};

/// Fixed headers: struct ifinfomsg, rtmsg, ndmsg.
const LINK_HEADER_LEN: usize = 16;
const ROUTE_HEADER_LEN: usize = 12;
const NEIGHBOUR_HEADER_LEN: usize = 12;

use crate::datapath::sys::{setsockopt_int, socket};

// ---------------------------------------------------------------------------------------
// rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h, if_link.h)

pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_REPLACE: u16 = 0x100;
pub(super) const NLM_F_CREATE: u16 = 0x400;

pub(super) const RTM_NEWLINK: u16 = 16;
pub(super) const RTM_DELLINK: u16 = 17;
pub(super) const RTM_GETLINK: u16 = 18;
pub(super) const RTM_SETLINK: u16 = 19;
pub(super) const RTM_NEWROUTE: u16 = 24;
pub(super) const RTM_DELROUTE: u16 = 25;
pub(super) const RTM_GETROUTE: u16 = 26;
pub(super) const RTM_NEWNEIGH: u16 = 28;
pub(super) const RTM_DELNEIGH: u16 = 29;
pub(super) const RTM_GETNEIGH: u16 = 30;

pub(super) const RTNLGRP_LINK: u32 = 1;
pub(super) const RTNLGRP_NEIGH: u32 = 3;
pub(super) const RTNLGRP_IPV4_ROUTE: u32 = 7;
pub(super) const RTNLGRP_IPV6_ROUTE: u32 = 11;

#[cfg(test)]
pub(super) const RTA_DST: u16 = 1;
#[cfg(test)]
pub(super) const RTA_OIF: u16 = 4;
#[cfg(test)]
pub(super) const RTA_GATEWAY: u16 = 5;
#[cfg(test)]
pub(super) const RTA_PREFSRC: u16 = 7;
#[cfg(test)]
pub(super) const RTA_METRICS: u16 = 8;
#[cfg(test)]
pub(super) const RTAX_MTU: u16 = 2;
#[cfg(test)]
pub(super) const RTN_UNICAST: u8 = 1;

#[cfg(test)]
pub(super) const IFLA_MTU: u16 = 4;
pub(super) const IFLA_XDP: u16 = 43;
pub(super) const IFLA_XDP_FD: u16 = 1;
pub(super) const IFLA_XDP_FLAGS: u16 = 3;
#[cfg(test)]
pub(super) const IFLA_XDP_DRV_PROG_ID: u16 = 5;
#[cfg(test)]
pub(super) const IFLA_XDP_HW_PROG_ID: u16 = 7;
#[cfg(test)]
pub(super) const IFLA_XDP_SKB_PROG_ID: u16 = 6;
pub(super) const IFLA_XDP_EXPECTED_FD: u16 = 8;
pub(super) const NLA_F_NESTED: u16 = 1 << 15;

/// Neighbour states (NUD_*).
pub mod nud {
    pub const INCOMPLETE: u16 = 0x01;
    pub const REACHABLE: u16 = 0x02;
    pub const STALE: u16 = 0x04;
    pub const DELAY: u16 = 0x08;
    pub const PROBE: u16 = 0x10;
    pub const FAILED: u16 = 0x20;
    pub const NOARP: u16 = 0x40;
    pub const PERMANENT: u16 = 0x80;
    /// NUD_VALID: the link-layer address may be used (the kernel sends with it too).
    pub const VALID: u16 = PERMANENT | NOARP | REACHABLE | PROBE | STALE | DELAY;
}

pub(super) fn family_of(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One request message: nlmsghdr + fixed header + attributes.
pub(super) struct Msg {
    pub(super) buf: Vec<u8>,
}

impl Msg {
    pub(super) fn new(ty: u16, flags: u16, fixed: &[u8]) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(fixed);
        buf.resize(align4(buf.len()), 0);
        Self { buf }
    }
    pub(super) fn attr(mut self, ty: u16, payload: &[u8]) -> Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }
    /// A request whose body the crate writes (fixed header and attributes).
    pub(super) fn emit(ty: u16, flags: u16, body: &impl Emitable) -> Self {
        let mut b = vec![0u8; body.buffer_len()];
        body.emit(&mut b);
        Self::new(ty, flags, &b)
    }
    pub(super) fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// A NETLINK_ROUTE socket in the network namespace of the thread that opened it.
pub(super) struct NlSocket {
    pub(super) fd: OwnedFd,
    pub(super) seq: u32,
    pub(super) buf: Vec<u8>,
}

impl NlSocket {
    pub(super) fn open(groups: &[u32]) -> io::Result<Self> {
        let fd = socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )?;
        // SAFETY: zeroed sockaddr_nl is valid; we set the family.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: valid fd and sockaddr of the right size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        for &g in groups {
            setsockopt_int(
                &fd,
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                g as i32,
            )?;
        }
        if !groups.is_empty() {
            // Best effort: a smaller buffer only means resyncs.
            let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20);
        }
        Ok(Self {
            fd,
            seq: 1,
            buf: vec![0u8; 1 << 16],
        })
    }

    pub(super) fn send(&mut self, msg: Msg) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let b = msg.finish(self.seq);
        // SAFETY: valid fd and buffer; the kernel is the default destination.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// One datagram (several messages); `dontwait` for event draining.
    pub(super) fn recv(&mut self, dontwait: bool) -> io::Result<usize> {
        let flags = if dontwait { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: valid fd; writes at most buf.len() bytes into buf.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends `msg` and collects the (type, body) of every reply message for it until the
    /// kernel is done: one answer, a dump's NLMSG_DONE, or an ack. An NLMSG_ERROR with an
    /// errno becomes that error.
    pub(super) fn request(&mut self, msg: Msg, dump: bool) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let seq = self.send(msg)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv(false)?;
            let mut done = false;
            for (ty, mseq, body) in messages(&self.buf[..n]) {
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let errno = body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        done = true; // an ack
                    }
                    _ => {
                        out.push((ty, body.to_vec()));
                        if !dump {
                            done = true;
                        }
                    }
                }
            }
            if done {
                return Ok(out);
            }
        }
    }
}

/// (type, seq, body) of each netlink message in a datagram.
pub(super) fn messages(mut b: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        let body = &b[NLMSG_HDRLEN..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, seq, body))
    })
}

// ---------------------------------------------------------------------------------------
// What the kernel tells: links, routes, neighbours.

/// An interface: `ip link show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// The route the kernel picks for one destination: `ip route get DST`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub oif: u32,
    /// The gateway (RTA_GATEWAY or RTA_VIA); None when the destination is on the link.
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would use (RTA_PREFSRC): ours towards `dst`.
    pub prefsrc: Option<IpAddr>,
    /// The route's own MTU (RTAX_MTU of `ip route ... mtu N`); None: the interface's MTU.
    /// A PMTU exception the host learned (an entry with an expiry) is not taken: the only
    /// ones this kernel learns are from ICMP about its own sockets' packets, which for a
    /// protected flow are the inner packets (our ICMP errors to the host's own stack), not
    /// the path of our outer ones; it has no ESP handler to learn those from.
    pub mtu: Option<u32>,
    /// `dst` is one of our own addresses.
    pub local: bool,
}

impl Route {
    /// The address whose MAC the frame goes to.
    pub fn next_hop(&self) -> IpAddr {
        self.gateway.unwrap_or(self.dst)
    }
}

/// A neighbour entry: `ip neigh show`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neigh {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub state: u16,
}

impl Neigh {
    /// The MAC when the kernel itself would send with it (NUD_VALID).
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        if self.state & nud::VALID != 0 {
            self.mac
        } else {
            None
        }
    }
}

pub(super) fn parse_link(body: &[u8]) -> Option<Link> {
    let (header, attributes) = link_message(body)?;
    let mut l = Link {
        index: header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
    };
    for a in attributes {
        match a {
            LinkAttribute::Address(p) if p.len() == 6 => l.mac.copy_from_slice(&p),
            LinkAttribute::Mtu(mtu) => l.mtu = mtu,
            LinkAttribute::IfName(name) => l.name = name,
            _ => {}
        }
    }
    Some(l)
}

/// An RTM_*LINK body: struct ifinfomsg (None when short) and the attributes that parse.
pub(super) fn link_message(body: &[u8]) -> Option<(LinkHeader, Vec<LinkAttribute>)> {
    let header = LinkHeader::parse(body).ok()?;
    let family = header.interface_family;
    let attrs = attributes(body.get(LINK_HEADER_LEN..)?, |n| {
        LinkAttribute::parse_with_param(n, family).ok()
    });
    Some((header, attrs))
}

/// The attributes in `buf` that the crate parses: one that does not is skipped and a length
/// past the end stops the walk, so a part the kernel adds later, or gets wrong, costs only
/// itself (as in the kernel's own nla_for_each_attr users).
pub(super) fn attributes<'a, A>(
    buf: &'a [u8],
    parse: impl Fn(&NlaBuffer<&'a [u8]>) -> Option<A>,
) -> Vec<A> {
    NlasIterator::new(buf)
        .map_while(|n| n.ok())
        .filter_map(|n| parse(&n))
        .collect()
}

pub(super) fn parse_route(body: &[u8], dst: IpAddr) -> Option<Route> {
    let header = RouteHeader::parse(body).ok()?;
    let param = (header.address_family, header.kind, RouteLwEnCapType::None);
    let attrs = attributes(body.get(ROUTE_HEADER_LEN..)?, |n| {
        RouteAttribute::parse_with_param(n, param).ok()
    });
    let local = match header.kind {
        RouteType::Unicast => false,
        RouteType::Local => true,
        _ => return None, // unreachable, blackhole, prohibit, broadcast, multicast…
    };
    let mut r = Route {
        dst,
        oif: 0,
        gateway: None,
        prefsrc: None,
        mtu: None,
        local,
    };
    let mut expires = false;
    for a in attrs {
        match a {
            RouteAttribute::CacheInfo(c) => expires = c.expires != 0,
            RouteAttribute::Oif(oif) => r.oif = oif,
            RouteAttribute::Gateway(g) => r.gateway = route_addr(g),
            // An IPv4 route via an IPv6 next hop.
            RouteAttribute::Via(RouteVia::Inet(a)) => r.gateway = Some(IpAddr::V4(a)),
            RouteAttribute::Via(RouteVia::Inet6(a)) => r.gateway = Some(IpAddr::V6(a)),
            RouteAttribute::PrefSource(a) => r.prefsrc = route_addr(a),
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    if let RouteMetric::Mtu(m) = m {
                        r.mtu = (m != 0).then_some(m);
                    }
                }
            }
            _ => {}
        }
    }
    if expires {
        r.mtu = None;
    }
    Some(r)
}

fn route_addr(a: RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(a)),
        _ => None,
    }
}

pub(super) fn parse_neigh(body: &[u8]) -> Option<Neigh> {
    let header = NeighbourHeader::parse(body).ok()?;
    let family = header.family;
    let attrs = attributes(body.get(NEIGHBOUR_HEADER_LEN..)?, |n| {
        NeighbourAttribute::parse_with_param(n, family).ok()
    });
    let mut addr = None;
    let mut mac = None;
    for a in attrs {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                addr = Some(IpAddr::V4(a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                addr = Some(IpAddr::V6(a))
            }
            NeighbourAttribute::LinkLayerAddress(p) if p.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(&p);
                mac = Some(m);
            }
            _ => {}
        }
    }
    Some(Neigh {
        ifindex: header.ifindex,
        addr: addr?,
        mac,
        state: u16::from(header.state),
    })
}

/// Synchronous rtnetlink queries, in the namespace of the thread that made it.
pub struct Rtnl {
    pub(super) sock: NlSocket,
}

impl Rtnl {
    pub fn new() -> Result<Self> {
        Ok(Self {
            sock: NlSocket::open(&[]).context("NETLINK_ROUTE socket")?,
        })
    }

    pub(super) fn link_req(&mut self, index: u32, name: Option<&str>) -> Result<Link> {
        self.get_link(index, name, parse_link)
    }

    /// RTM_GETLINK by index or name; `parse` reads the RTM_NEWLINK answer.
    pub(super) fn get_link<T>(
        &mut self,
        index: u32,
        name: Option<&str>,
        parse: fn(&[u8]) -> Option<T>,
    ) -> Result<T> {
        let mut l = LinkMessage::default();
        l.header.index = index;
        if let Some(n) = name {
            l.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
        let m = Msg::emit(RTM_GETLINK, 0, &l);
        let what = name.map_or_else(|| format!("ifindex {index}"), |n| n.to_string());
        let replies = self
            .sock
            .request(m, false)
            .with_context(|| format!("interface {what}"))?;
        replies
            .iter()
            .find(|(ty, _)| *ty == RTM_NEWLINK)
            .and_then(|(_, b)| parse(b))
            .with_context(|| format!("interface {what}: no answer"))
    }

    /// The interface named `name`: its index, MAC and MTU.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link> {
        self.link_req(0, Some(name))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Link> {
        self.link_req(index, None)
    }

    /// `ip route get DST`: the route the kernel would use.
    pub fn route_get(&mut self, dst: IpAddr) -> Result<Route> {
        let mut r = RouteMessage::default();
        r.header.address_family = family_of(dst);
        r.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        r.attributes.push(RouteAttribute::Destination(dst.into()));
        let m = Msg::emit(RTM_GETROUTE, 0, &r);
        let replies = self
            .sock
            .request(m, false)
            .with_context(|| format!("route to {dst}"))?;
        replies
            .iter()
            .find(|(ty, _)| *ty == RTM_NEWROUTE)
            .and_then(|(_, b)| parse_route(b, dst))
            .with_context(|| format!("no unicast route to {dst}"))
    }

    /// `ip neigh get ADDR dev IF`; Ok(None) when the kernel has no entry.
    pub fn neigh_get(&mut self, ifindex: u32, addr: IpAddr) -> Result<Option<Neigh>> {
        let m = Msg::emit(
            RTM_GETNEIGH,
            0,
            &neigh_msg(ifindex, addr, NeighbourFlags::empty()),
        );
        match self.sock.request(m, false) {
            Ok(replies) => Ok(replies
                .iter()
                .find(|(ty, _)| *ty == RTM_NEWNEIGH)
                .and_then(|(_, b)| parse_neigh(b))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("neighbour {addr} on ifindex {ifindex}")),
        }
    }

    /// Makes the kernel resolve (or re-probe) `addr` on `ifindex`: RTM_NEWNEIGH with
    /// NTF_USE runs neigh_event_send on the entry, created if needed; the kernel sends the
    /// ARP request / neighbour solicitation and reports the outcome as RTM_NEWNEIGH.
    pub fn neigh_resolve(&mut self, ifindex: u32, addr: IpAddr) -> Result<()> {
        let m = Msg::emit(
            RTM_NEWNEIGH,
            NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
            &neigh_msg(ifindex, addr, NeighbourFlags::Use),
        );
        self.sock
            .request(m, false)
            .map(|_| ())
            .with_context(|| format!("resolve neighbour {addr} on ifindex {ifindex}"))
    }
}

/// One attribute (header, payload, padding), to nest inside another.
pub(super) fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(align4(4 + payload.len()));
    b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(payload);
    b.resize(align4(b.len()), 0);
    b
}

/// An ndmsg for `addr` on `ifindex` (state 0) with NDA_DST.
fn neigh_msg(ifindex: u32, addr: IpAddr, flags: NeighbourFlags) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family_of(addr);
    m.header.ifindex = ifindex;
    m.header.flags = flags;
    m.attributes
        .push(NeighbourAttribute::Destination(addr.into()));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_walk_and_stop_on_garbage() {
        let m = Msg::new(RTM_GETROUTE, 0, &[0u8; 12])
            .attr(RTA_DST, &[10, 0, 0, 1])
            .attr(RTA_OIF, &7u32.to_ne_bytes())
            .attr(99, &[1, 2, 3]);
        let b = m.finish(5);
        let (ty, seq, body) = messages(&b).next().unwrap();
        assert_eq!((ty, seq), (RTM_GETROUTE, 5));
        let a = attributes(&body[12..], |n| Some((n.kind(), n.value().to_vec())));
        assert_eq!(a.len(), 3);
        assert_eq!(a[0], (RTA_DST, vec![10u8, 0, 0, 1]));
        assert_eq!(a[2], (99, vec![1u8, 2, 3]));
        // A length past the end stops the walk instead of panicking.
        let mut bad = body[12..].to_vec();
        bad[0] = 200;
        assert_eq!(attributes(&bad, |_| Some(())).len(), 0);
        assert_eq!(messages(&b[..10]).count(), 0);
    }

    #[test]
    fn route_parse() {
        let mut fixed = [0u8; 12];
        fixed[0] = libc::AF_INET as u8;
        fixed[7] = RTN_UNICAST;
        let metrics = Msg::new(0, 0, &[])
            .attr(RTAX_MTU, &1400u32.to_ne_bytes())
            .buf;
        let b = Msg::new(RTM_NEWROUTE, 0, &fixed)
            .attr(RTA_OIF, &3u32.to_ne_bytes())
            .attr(RTA_GATEWAY, &[10, 0, 0, 254])
            .attr(RTA_PREFSRC, &[10, 0, 0, 1])
            .attr(RTA_METRICS, &metrics[NLMSG_HDRLEN..])
            .finish(1);
        let dst: IpAddr = "10.9.9.9".parse().unwrap();
        let r = parse_route(&b[NLMSG_HDRLEN..], dst).unwrap();
        assert_eq!(r.oif, 3);
        assert_eq!(r.next_hop(), "10.0.0.254".parse::<IpAddr>().unwrap());
        assert_eq!(r.prefsrc, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r.mtu, Some(1400));
        // Unreachable routes are no routes.
        let mut f2 = fixed;
        f2[7] = 7;
        let b = Msg::new(RTM_NEWROUTE, 0, &f2).finish(1);
        assert!(parse_route(&b[NLMSG_HDRLEN..], dst).is_none());
    }

    #[test]
    fn neigh_states() {
        let n = |state| Neigh {
            ifindex: 1,
            addr: "10.0.0.1".parse().unwrap(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            state,
        };
        for s in [
            nud::REACHABLE,
            nud::STALE,
            nud::DELAY,
            nud::PROBE,
            nud::PERMANENT,
        ] {
            assert!(n(s).usable_mac().is_some(), "{s:#x}");
        }
        for s in [0, nud::INCOMPLETE, nud::FAILED] {
            assert!(n(s).usable_mac().is_none(), "{s:#x}");
        }
    }
}
