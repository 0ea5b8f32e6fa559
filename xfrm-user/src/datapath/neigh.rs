//! Layer 2 from the kernel: for a destination IP, the next hop and its MAC from the routing
//! and neighbour tables (rtnetlink), plus the outgoing interface's own MAC and MTU. Nothing is
//! configured by hand.
//!
//! - **Cache.** A control task (tokio: the gateway's control-plane runtime, or a runtime on a
//!   thread of its own when started outside one) owns the state and publishes an immutable
//!   [`Snapshot`]
//!   (destination → [`L2`]) behind an `Arc`; each worker keeps a [`NeighReader`] that checks
//!   one atomic generation per batch and looks destinations up in its own `Arc` without a
//!   lock or an allocation per packet.
//! - **Refresh on change.** The control task listens to RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE,
//!   RTNLGRP_IPV6_ROUTE and RTNLGRP_LINK: a neighbour event updates its entry; a route or link
//!   event re-resolves every tracked destination (they are rare). An overrun event socket
//!   (ENOBUFS) triggers the same full resync.
//! - **Resolution when missing.** A destination the reader does not know is queued to the
//!   control task (bounded channel, `try_send`: never blocks a worker). It asks the kernel
//!   for the route (RTM_GETROUTE, as `ip route get`), then for the next hop's neighbour
//!   (RTM_GETNEIGH, as `ip neigh get`); if there is none or it is not valid, it sends
//!   RTM_NEWNEIGH with NTF_USE, which makes the kernel run `neigh_event_send` on the entry
//!   (created if absent): the kernel sends the ARP request / neighbour solicitation itself,
//!   with its own retransmits and timers, and the answer arrives as an RTM_NEWNEIGH event.
//!   This is the kernel's own resolution, honoured for IPv4 and IPv6 alike, with no packet of
//!   ours on the wire.
//! - **Keeping it fresh.** Our packets bypass the kernel, so it never sees the entries in use
//!   and would leave them STALE forever. Every `poke_interval` the control task sends
//!   NTF_USE for the tracked next hops in STALE state: the kernel goes DELAY → PROBE
//!   (a unicast probe) and back to REACHABLE, or to FAILED (then the entry is unusable and
//!   the destination is resolved again), as it would for its own traffic.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{mpsc, Notify},
};

use super::sys::{setsockopt_int, socket, ControlTask, LentFd};

// ---------------------------------------------------------------------------------------
// rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h, if_link.h)

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_METRICS: u16 = 8;
const RTA_CACHEINFO: u16 = 12;
const RTA_VIA: u16 = 18;
const RTAX_MTU: u16 = 2;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;

const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NTF_USE: u8 = 0x01;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
const NLA_F_NESTED: u16 = 1 << 15;

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

fn family_of(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn parse_addr(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Route attributes (struct rtattr) after a fixed header: (type, payload) pairs.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff; // NLA_F_NESTED / NET_BYTEORDER
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, payload))
    })
}

/// One request message: nlmsghdr + fixed header + attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16, fixed: &[u8]) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(fixed);
        buf.resize(align4(buf.len()), 0);
        Self { buf }
    }
    fn attr(mut self, ty: u16, payload: &[u8]) -> Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }
    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// A NETLINK_ROUTE socket in the network namespace of the thread that opened it.
struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    fn open(groups: &[u32]) -> io::Result<Self> {
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

    fn send(&mut self, msg: Msg) -> io::Result<u32> {
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
    fn recv(&mut self, dontwait: bool) -> io::Result<usize> {
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
    fn request(&mut self, msg: Msg, dump: bool) -> io::Result<Vec<(u16, Vec<u8>)>> {
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
fn messages(mut b: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
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

/// Every decoder over every message of a datagram from rtnetlink, as the cache and the
/// attach code meet them; how many decoded. Untrusted bytes in, no panic out (the `neigh`
/// fuzz target).
pub fn decode_datagram(buf: &[u8]) -> usize {
    let mut n = 0;
    for (_, _, body) in messages(buf) {
        n += usize::from(parse_link(body).is_some());
        n += usize::from(parse_link_xdp(body).is_some());
        n += usize::from(parse_neigh(body).is_some());
        for dst in [
            IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ] {
            n += usize::from(parse_route(body, dst).is_some());
        }
    }
    n
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

fn parse_link(body: &[u8]) -> Option<Link> {
    // struct ifinfomsg: family, pad, type(u16), index(i32), flags, change.
    if body.len() < 16 {
        return None;
    }
    let index = i32::from_ne_bytes(body[4..8].try_into().ok()?) as u32;
    let mut l = Link {
        index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
    };
    for (ty, p) in attrs(&body[16..]) {
        match ty {
            IFLA_ADDRESS if p.len() == 6 => l.mac.copy_from_slice(p),
            IFLA_MTU if p.len() == 4 => l.mtu = u32::from_ne_bytes(p.try_into().ok()?),
            IFLA_IFNAME => {
                let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
                l.name = String::from_utf8_lossy(&p[..end]).into_owned();
            }
            _ => {}
        }
    }
    Some(l)
}

/// An XDP program attached to an interface, per IFLA_XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpProg {
    pub id: u32,
    pub mode: XdpAttachMode,
}

/// Where an XDP program runs (XDP_ATTACHED_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// Generic XDP (XDP_FLAGS_SKB_MODE).
    Skb,
    /// In the driver (XDP_FLAGS_DRV_MODE).
    Drv,
    /// Offloaded to the NIC.
    Hw,
}

fn parse_link_xdp(body: &[u8]) -> Option<(u32, Vec<XdpProg>)> {
    if body.len() < 16 {
        return None;
    }
    let index = i32::from_ne_bytes(body[4..8].try_into().ok()?) as u32;
    let mut progs = Vec::new();
    for (ty, p) in attrs(&body[16..]) {
        if ty != IFLA_XDP {
            continue;
        }
        for (ty, p) in attrs(p) {
            let mode = match ty {
                IFLA_XDP_SKB_PROG_ID => XdpAttachMode::Skb,
                IFLA_XDP_DRV_PROG_ID => XdpAttachMode::Drv,
                IFLA_XDP_HW_PROG_ID => XdpAttachMode::Hw,
                _ => continue,
            };
            if let Ok(b) = <[u8; 4]>::try_from(p) {
                let id = u32::from_ne_bytes(b);
                if id != 0 {
                    progs.push(XdpProg { id, mode });
                }
            }
        }
    }
    Some((index, progs))
}

fn parse_route(body: &[u8], dst: IpAddr) -> Option<Route> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags(u32).
    if body.len() < 12 {
        return None;
    }
    let rtype = body[7];
    let mut r = Route {
        dst,
        oif: 0,
        gateway: None,
        prefsrc: None,
        mtu: None,
        local: rtype == RTN_LOCAL,
    };
    if rtype != RTN_UNICAST && rtype != RTN_LOCAL {
        return None; // unreachable, blackhole, prohibit, broadcast, multicast…
    }
    let mut expires = false;
    for (ty, p) in attrs(&body[12..]) {
        match ty {
            // struct rta_cacheinfo: clntref, lastuse, expires (s32), ...
            RTA_CACHEINFO if p.len() >= 12 => {
                expires = i32::from_ne_bytes(p[8..12].try_into().ok()?) != 0;
            }
            RTA_OIF if p.len() == 4 => r.oif = u32::from_ne_bytes(p.try_into().ok()?),
            RTA_GATEWAY => r.gateway = parse_addr(p),
            // struct rtvia: family (u16) then the address (an IPv4 route via IPv6).
            RTA_VIA if p.len() > 2 => r.gateway = parse_addr(&p[2..]),
            RTA_PREFSRC => r.prefsrc = parse_addr(p),
            RTA_METRICS => {
                for (mty, mp) in attrs(p) {
                    if mty == RTAX_MTU && mp.len() == 4 {
                        let m = u32::from_ne_bytes(mp.try_into().ok()?);
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

fn parse_neigh(body: &[u8]) -> Option<Neigh> {
    // struct ndmsg: family, pad1, pad2(u16), ifindex(i32), state(u16), flags, type.
    if body.len() < 12 {
        return None;
    }
    let ifindex = i32::from_ne_bytes(body[4..8].try_into().ok()?) as u32;
    let state = u16::from_ne_bytes([body[8], body[9]]);
    let mut addr = None;
    let mut mac = None;
    for (ty, p) in attrs(&body[12..]) {
        match ty {
            NDA_DST => addr = parse_addr(p),
            NDA_LLADDR if p.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(p);
                mac = Some(m);
            }
            _ => {}
        }
    }
    Some(Neigh {
        ifindex,
        addr: addr?,
        mac,
        state,
    })
}

/// Synchronous rtnetlink queries, in the namespace of the thread that made it.
pub struct Rtnl {
    sock: NlSocket,
}

impl Rtnl {
    pub fn new() -> Result<Self> {
        Ok(Self {
            sock: NlSocket::open(&[]).context("NETLINK_ROUTE socket")?,
        })
    }

    fn link_req(&mut self, index: u32, name: Option<&str>) -> Result<Link> {
        let mut fixed = [0u8; 16];
        fixed[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        let mut m = Msg::new(RTM_GETLINK, 0, &fixed);
        if let Some(n) = name {
            let mut z = n.as_bytes().to_vec();
            z.push(0);
            m = m.attr(IFLA_IFNAME, &z);
        }
        let what = name.map_or_else(|| format!("ifindex {index}"), |n| n.to_string());
        let replies = self
            .sock
            .request(m, false)
            .with_context(|| format!("interface {what}"))?;
        replies
            .iter()
            .find(|(ty, _)| *ty == RTM_NEWLINK)
            .and_then(|(_, b)| parse_link(b))
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
        let mut fixed = [0u8; 12];
        fixed[0] = family_of(dst);
        fixed[1] = if dst.is_ipv4() { 32 } else { 128 };
        let m = Msg::new(RTM_GETROUTE, 0, &fixed).attr(RTA_DST, &addr_bytes(&dst));
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
        let m = Msg::new(RTM_GETNEIGH, 0, &ndmsg(ifindex, addr, 0, 0))
            .attr(NDA_DST, &addr_bytes(&addr));
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
        let m = Msg::new(
            RTM_NEWNEIGH,
            NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
            &ndmsg(ifindex, addr, 0, NTF_USE),
        )
        .attr(NDA_DST, &addr_bytes(&addr));
        self.sock
            .request(m, false)
            .map(|_| ())
            .with_context(|| format!("resolve neighbour {addr} on ifindex {ifindex}"))
    }

    /// The XDP programs on the interface named `name` (its index, then one entry per mode
    /// with a program: rtnl_xdp_fill reports each mode's program id).
    pub fn xdp_programs(&mut self, name: &str) -> Result<(u32, Vec<XdpProg>)> {
        let mut fixed = [0u8; 16];
        fixed[4..8].copy_from_slice(&0i32.to_ne_bytes());
        let mut z = name.as_bytes().to_vec();
        z.push(0);
        let m = Msg::new(RTM_GETLINK, 0, &fixed).attr(IFLA_IFNAME, &z);
        let replies = self
            .sock
            .request(m, false)
            .with_context(|| format!("interface {name}"))?;
        replies
            .iter()
            .find(|(ty, _)| *ty == RTM_NEWLINK)
            .and_then(|(_, b)| parse_link_xdp(b))
            .with_context(|| format!("interface {name}: no answer"))
    }

    /// `ip link set dev IFINDEX xdp fd FD` (netlink mode, no bpf_link): RTM_SETLINK with
    /// IFLA_XDP { FD, FLAGS, EXPECTED_FD }. `fd` -1 detaches. Without XDP_FLAGS_REPLACE the
    /// kernel swaps whatever netlink-attached program is there for `fd` in one pointer store
    /// (dev_xdp_install); with it, only if the attached program is `expected`'s (else
    /// EEXIST). A program attached through a bpf_link refuses both (EBUSY).
    pub fn set_xdp(
        &mut self,
        ifindex: u32,
        fd: i32,
        flags: u32,
        expected: Option<i32>,
    ) -> Result<()> {
        let mut fixed = [0u8; 16];
        fixed[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let mut nested = nla(IFLA_XDP_FD, &fd.to_ne_bytes());
        nested.extend(nla(IFLA_XDP_FLAGS, &flags.to_ne_bytes()));
        if let Some(e) = expected {
            nested.extend(nla(IFLA_XDP_EXPECTED_FD, &e.to_ne_bytes()));
        }
        let m = Msg::new(RTM_SETLINK, NLM_F_ACK, &fixed).attr(IFLA_XDP | NLA_F_NESTED, &nested);
        self.sock
            .request(m, false)
            .map(|_| ())
            .map_err(anyhow::Error::from)
    }
}

/// One attribute (header, payload, padding), to nest inside another.
fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(align4(4 + payload.len()));
    b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(payload);
    b.resize(align4(b.len()), 0);
    b
}

fn ndmsg(ifindex: u32, addr: IpAddr, state: u16, flags: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = family_of(addr);
    b[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    b[8..10].copy_from_slice(&state.to_ne_bytes());
    b[10] = flags;
    b
}

// ---------------------------------------------------------------------------------------
// The cache the workers read.

/// Everything a worker needs to put a frame for one destination on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2 {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The route's MTU (or PMTU) if it has one, else the interface's.
    pub mtu: u32,
    /// Our address towards the destination (the source of ICMP errors we send there).
    pub src_addr: Option<IpAddr>,
    pub next_hop: IpAddr,
}

/// An immutable view: destination → L2 for the destinations that resolved, and our source
/// address towards every destination with a route (known before its neighbour is).
#[derive(Debug, Default)]
pub struct Snapshot {
    resolved: FastMap<IpAddr, L2>,
    prefsrc: FastMap<IpAddr, IpAddr>,
    /// Destinations that are our own addresses (the kernel's route is local).
    local: FastSet<IpAddr>,
}

/// Per-packet lookups in tables rebuilt whole on change: a fast hash (the keys come from
/// packets only after they were authenticated or classified, and never grow the table).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Where a packet for a destination goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Out of an interface, to this next hop.
    Via(L2),
    /// One of this host's own addresses.
    Local,
}

impl Snapshot {
    pub fn get(&self, dst: &IpAddr) -> Option<&L2> {
        self.resolved.get(dst)
    }
    /// The route's preferred source towards `dst` (RTA_PREFSRC).
    pub fn src_towards(&self, dst: &IpAddr) -> Option<IpAddr> {
        self.prefsrc.get(dst).copied()
    }
    /// Where `dst` goes, once it resolved (one lookup for the usual case, a remote one).
    pub fn hop(&self, dst: &IpAddr) -> Option<Hop> {
        match self.resolved.get(dst) {
            Some(l2) => Some(Hop::Via(*l2)),
            None if self.local.contains(dst) => Some(Hop::Local),
            None => None,
        }
    }
    pub fn len(&self) -> usize {
        self.resolved.len()
    }
    pub fn is_empty(&self) -> bool {
        self.resolved.is_empty()
    }
}

/// The shared, published state: a generation and the current snapshot.
struct Shared {
    generation: AtomicU64,
    current: Mutex<Arc<Snapshot>>,
}

impl Shared {
    fn publish(&self, s: Snapshot) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *cur = Arc::new(s);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A worker's handle: `refresh` once per batch, `lookup` per packet.
pub struct NeighReader {
    shared: Arc<Shared>,
    generation: u64,
    snap: Arc<Snapshot>,
    /// To the control task; `try_send` never blocks (a full queue drops the request, the
    /// next miss asks again).
    requests: mpsc::Sender<IpAddr>,
}

impl Clone for NeighReader {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            generation: self.generation,
            snap: self.snap.clone(),
            requests: self.requests.clone(),
        }
    }
}

impl NeighReader {
    /// Picks up a newer snapshot if one was published: one atomic load when nothing changed.
    pub fn refresh(&mut self) {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            let cur = self
                .shared
                .current
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.snap = cur.clone();
            self.generation = g;
        }
    }

    /// The L2 for `dst`; None (and a resolution request to the control task) when it is
    /// not known yet. Never blocks and never allocates.
    pub fn lookup(&self, dst: IpAddr) -> Option<L2> {
        let r = self.snap.get(&dst).copied();
        if r.is_none() {
            let _ = self.requests.try_send(dst);
        }
        r
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// [`Snapshot::hop`], asking for resolution on a miss like [`Self::lookup`].
    pub fn next_hop(&self, dst: IpAddr) -> Option<Hop> {
        let r = self.snap.hop(&dst);
        if r.is_none() {
            let _ = self.requests.try_send(dst);
        }
        r
    }

    /// Our address towards `dst` (for ICMP errors we send there); needs only the route, not
    /// the neighbour. A miss asks for resolution like [`NeighReader::lookup`].
    pub fn src_towards(&self, dst: IpAddr) -> Option<IpAddr> {
        let r = self.snap.src_towards(&dst);
        if r.is_none() {
            let _ = self.requests.try_send(dst);
        }
        r
    }
}

/// Knobs of the control task.
#[derive(Clone, Copy, Debug)]
pub struct NeighOptions {
    /// How often STALE next hops in use are re-probed.
    pub poke_interval: Duration,
    /// How often failed next hops and destinations without a route are retried.
    pub retry_interval: Duration,
}

impl Default for NeighOptions {
    fn default() -> Self {
        Self {
            poke_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// The control task that keeps the cache; stopped on drop.
pub struct NeighService {
    shared: Arc<Shared>,
    requests: mpsc::Sender<IpAddr>,
    _task: ControlTask,
}

impl NeighService {
    /// Opens the netlink sockets in the calling thread's network namespace and starts the
    /// control thread. `prime`: destinations to resolve right away (e.g. the SAs' peers).
    pub fn start(prime: &[IpAddr], opts: NeighOptions) -> Result<Self> {
        let events = NlSocket::open(&[
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_ROUTE,
        ])
        .context("rtnetlink event socket")?;
        let rtnl = Rtnl::new()?;
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(Snapshot::default())),
        });
        let (tx, rx) = mpsc::channel(1024);
        for &d in prime {
            let _ = tx.try_send(d);
        }
        let ctl = Control {
            rtnl,
            events,
            shared: shared.clone(),
            opts,
            dsts: HashMap::new(),
            neighs: HashMap::new(),
            links: HashMap::new(),
        };
        let task = ControlTask::start("xfrm-neigh", |stop| ctl.run(rx, stop))
            .context("start the neighbour task")?;
        Ok(Self {
            shared,
            requests: tx,
            _task: task,
        })
    }

    pub fn reader(&self) -> NeighReader {
        let snap = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        NeighReader {
            shared: self.shared.clone(),
            generation: self.shared.generation.load(Ordering::Acquire),
            snap,
            requests: self.requests.clone(),
        }
    }

    /// Waits until `dst` resolves (for start-up and tests).
    pub fn wait_resolved(&self, dst: IpAddr, timeout: Duration) -> Option<L2> {
        let mut r = self.reader();
        let end = Instant::now() + timeout;
        loop {
            r.refresh();
            if let Some(l2) = r.lookup(dst) {
                return Some(l2);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Destinations the cache follows at most (each costs a route lookup on every route
/// change); beyond it new ones stay unresolved and their packets are dropped.
const MAX_TRACKED: usize = 65536;

/// What the control thread knows about one tracked destination.
#[derive(Clone, Copy, Debug)]
struct DstState {
    route: Option<Route>,
    /// The destination is one of our own addresses (a local route): delivered to the host.
    local: bool,
    /// When resolution was last asked of the kernel (to retry, not to flood).
    last_try: Option<Instant>,
}

struct Control {
    rtnl: Rtnl,
    events: NlSocket,
    shared: Arc<Shared>,
    opts: NeighOptions,
    dsts: HashMap<IpAddr, DstState>,
    /// (ifindex, next hop) → what the kernel says.
    neighs: HashMap<(u32, IpAddr), Neigh>,
    links: HashMap<u32, Link>,
}

impl Control {
    /// The control loop: workers' requests, kernel events, and the two timers (re-probe
    /// STALE next hops; retry the unresolved), until `stop`.
    async fn run(mut self, mut requests: mpsc::Receiver<IpAddr>, stop: Arc<Notify>) {
        let raw = LentFd(self.events.fd.as_raw_fd());
        // SAFETY: the fd belongs to self.events, which outlives this local (a parameter is
        // dropped after the function's locals) and is not closed or replaced meanwhile.
        let events = match unsafe { AsyncFd::register_with_interest(raw, Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                log::error!("rtnetlink events: {e}; the neighbour cache stays empty");
                return;
            }
        };
        let mut poke = tokio::time::interval(self.opts.poke_interval);
        let mut retry = tokio::time::interval(self.opts.retry_interval);
        for t in [&mut poke, &mut retry] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            let changed = tokio::select! {
                _ = stop.notified() => break,
                Some(d) = requests.recv() => {
                    // Everything queued, as one batch.
                    let mut fresh = HashSet::from([d]);
                    while let Ok(d) = requests.try_recv() {
                        fresh.insert(d);
                    }
                    self.track(fresh)
                }
                ready = events.readable() => {
                    let Ok(mut guard) = ready else { break };
                    guard.clear_ready();
                    match self.drain_events() {
                        Ok(c) => c,
                        Err(e) => {
                            log::warn!("rtnetlink events: {e}; resyncing");
                            self.resync();
                            true
                        }
                    }
                }
                _ = poke.tick() => {
                    retry.reset();
                    self.poke(true)
                }
                _ = retry.tick() => self.poke(false),
            };
            if changed {
                self.publish();
            }
        }
    }

    /// New destinations from the workers: tracked and resolved (true if any was new).
    fn track(&mut self, fresh: HashSet<IpAddr>) -> bool {
        let mut changed = false;
        for d in fresh {
            if self.dsts.contains_key(&d) {
                continue;
            }
            if self.dsts.len() >= MAX_TRACKED {
                log::warn!("neighbour cache full ({MAX_TRACKED} destinations): {d} not tracked");
                break;
            }
            self.dsts.insert(
                d,
                DstState {
                    route: None,
                    local: false,
                    last_try: None,
                },
            );
            self.resolve_dst(d);
            changed = true;
        }
        changed
    }

    /// Route, link and neighbour of `d` from the kernel; resolution asked when needed.
    fn resolve_dst(&mut self, d: IpAddr) {
        let mut local = false;
        let route = match self.rtnl.route_get(d) {
            Ok(r) if !r.local => Some(r),
            Ok(_) => {
                local = true;
                None
            }
            Err(e) => {
                log::debug!("{e:#}");
                None
            }
        };
        let st = self.dsts.entry(d).or_insert(DstState {
            route: None,
            local: false,
            last_try: None,
        });
        st.route = route;
        st.local = local;
        let Some(route) = route else { return };
        if let Entry::Vacant(v) = self.links.entry(route.oif) {
            match self.rtnl.link_by_index(route.oif) {
                Ok(l) => {
                    v.insert(l);
                }
                Err(e) => log::warn!("{e:#}"),
            }
        }
        let key = (route.oif, route.next_hop());
        match self.rtnl.neigh_get(route.oif, route.next_hop()) {
            Ok(Some(n)) => {
                self.neighs.insert(key, n);
            }
            Ok(None) => {
                self.neighs.remove(&key);
            }
            Err(e) => log::debug!("{e:#}"),
        }
        let usable = self.neighs.get(&key).and_then(|n| n.usable_mac()).is_some();
        if !usable {
            self.trigger(d, route);
        }
    }

    fn trigger(&mut self, d: IpAddr, route: Route) {
        if let Err(e) = self.rtnl.neigh_resolve(route.oif, route.next_hop()) {
            log::warn!("{e:#}");
        }
        if let Some(st) = self.dsts.get_mut(&d) {
            st.last_try = Some(Instant::now());
        }
    }

    /// Reads pending events for up to `wait`; true if anything we track changed.
    fn drain_events(&mut self) -> io::Result<bool> {
        let mut changed = false;
        let mut reroute = false;
        loop {
            let n = match self.events.recv(true) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e), // ENOBUFS: events were lost
            };
            let batch: Vec<(u16, Vec<u8>)> = messages(&self.events.buf[..n])
                .map(|(ty, _, b)| (ty, b.to_vec()))
                .collect();
            for (ty, body) in batch {
                match ty {
                    RTM_NEWNEIGH | RTM_DELNEIGH => {
                        let Some(mut n) = parse_neigh(&body) else {
                            continue;
                        };
                        let key = (n.ifindex, n.addr);
                        if !self.tracked_next_hop(key) {
                            continue;
                        }
                        if ty == RTM_DELNEIGH {
                            n.state = 0;
                        }
                        if self.neighs.get(&key) != Some(&n) {
                            log::debug!(
                                "neighbour {} now {:?} state {:#x}",
                                n.addr,
                                n.mac,
                                n.state
                            );
                            self.neighs.insert(key, n);
                            changed = true;
                        }
                    }
                    RTM_NEWROUTE | RTM_DELROUTE => reroute = true,
                    RTM_NEWLINK | RTM_DELLINK => {
                        if let Some(l) = parse_link(&body) {
                            if let Entry::Occupied(mut e) = self.links.entry(l.index) {
                                if ty == RTM_DELLINK {
                                    e.remove();
                                } else {
                                    e.insert(l);
                                }
                                changed = true;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if reroute {
            self.resync();
            changed = true;
        }
        Ok(changed)
    }

    fn tracked_next_hop(&self, key: (u32, IpAddr)) -> bool {
        self.dsts
            .values()
            .filter_map(|s| s.route)
            .any(|r| (r.oif, r.next_hop()) == key)
    }

    /// Everything again from the kernel: after a route change or lost events.
    fn resync(&mut self) {
        self.links.clear();
        self.neighs.clear();
        let dsts: Vec<IpAddr> = self.dsts.keys().copied().collect();
        for d in dsts {
            self.resolve_dst(d);
        }
    }

    /// Re-probes STALE next hops when `stale_too` (the kernel does not see our traffic),
    /// asks again for next hops that failed or vanished (an IPv6 solicitation the kernel
    /// could not send yet, e.g. while the link-local address was tentative, ends FAILED),
    /// and retries destinations without a route.
    fn poke(&mut self, stale_too: bool) -> bool {
        let mut todo = Vec::new();
        let mut retry = Vec::new();
        for (&d, st) in &self.dsts {
            match st.route {
                Some(r) => {
                    let n = self.neighs.get(&(r.oif, r.next_hop()));
                    match n.map(|n| n.state) {
                        Some(s) if s & nud::STALE != 0 => {
                            if stale_too {
                                todo.push((d, r))
                            }
                        }
                        // Still resolving (INCOMPLETE): the kernel is on it.
                        Some(nud::INCOMPLETE) => {}
                        Some(s) if s & nud::VALID != 0 => {}
                        _ => todo.push((d, r)),
                    }
                }
                None => retry.push(d),
            }
        }
        let mut seen = HashSet::new();
        for (d, r) in todo {
            if seen.insert((r.oif, r.next_hop())) {
                self.trigger(d, r);
            }
        }
        let changed = !retry.is_empty();
        for d in retry {
            self.resolve_dst(d);
        }
        changed
    }

    fn publish(&self) {
        let mut resolved = FastMap::default();
        let mut prefsrc = FastMap::default();
        let mut local = FastSet::default();
        for (&d, st) in &self.dsts {
            if st.local {
                local.insert(d);
            }
            let Some(r) = st.route else { continue };
            if let Some(src) = r.prefsrc {
                prefsrc.insert(d, src);
            }
            let Some(link) = self.links.get(&r.oif) else {
                continue;
            };
            let Some(mac) = self
                .neighs
                .get(&(r.oif, r.next_hop()))
                .and_then(|n| n.usable_mac())
            else {
                continue;
            };
            resolved.insert(
                d,
                L2 {
                    ifindex: r.oif,
                    dst_mac: mac,
                    src_mac: link.mac,
                    mtu: r.mtu.unwrap_or(link.mtu),
                    src_addr: r.prefsrc,
                    next_hop: r.next_hop(),
                },
            );
        }
        self.shared.publish(Snapshot {
            resolved,
            prefsrc,
            local,
        });
    }
}

/// Fails unless `name` exists here; returns its index, MAC and MTU (a convenience for the
/// worker's start-up).
pub fn interface(name: &str) -> Result<Link> {
    let mut r = Rtnl::new()?;
    let l = r.link_by_name(name)?;
    if l.mtu == 0 {
        bail!("interface {name}: no MTU reported");
    }
    Ok(l)
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
        let a: Vec<_> = attrs(&body[12..]).collect();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0], (RTA_DST, &[10u8, 0, 0, 1][..]));
        assert_eq!(a[2], (99, &[1u8, 2, 3][..]));
        // A length past the end stops the walk instead of panicking.
        let mut bad = body[12..].to_vec();
        bad[0] = 200;
        assert_eq!(attrs(&bad).count(), 0);
        assert_eq!(messages(&b[..10]).count(), 0);
    }

    #[test]
    fn link_xdp_parse() {
        let nested = Msg::new(0, 0, &[])
            .attr(2, &[4u8]) // IFLA_XDP_ATTACHED: MULTI
            .attr(IFLA_XDP_SKB_PROG_ID, &11u32.to_ne_bytes())
            .attr(IFLA_XDP_DRV_PROG_ID, &12u32.to_ne_bytes())
            .attr(IFLA_XDP_HW_PROG_ID, &[1, 2]) // malformed: skipped
            .buf;
        let mut fixed = [0u8; 16];
        fixed[4..8].copy_from_slice(&9i32.to_ne_bytes());
        let b = Msg::new(RTM_NEWLINK, 0, &fixed)
            .attr(IFLA_MTU, &1500u32.to_ne_bytes())
            .attr(IFLA_XDP | NLA_F_NESTED, &nested[NLMSG_HDRLEN..])
            .finish(1);
        let (_, _, body) = messages(&b).next().unwrap();
        let (index, progs) = parse_link_xdp(body).unwrap();
        assert_eq!(index, 9);
        assert_eq!(
            progs,
            vec![
                XdpProg {
                    id: 11,
                    mode: XdpAttachMode::Skb
                },
                XdpProg {
                    id: 12,
                    mode: XdpAttachMode::Drv
                }
            ]
        );
        // No IFLA_XDP at all (or an empty one): nothing attached.
        let b = Msg::new(RTM_NEWLINK, 0, &fixed).finish(2);
        let (_, _, body) = messages(&b).next().unwrap();
        assert_eq!(parse_link_xdp(body), Some((9, vec![])));
        assert_eq!(parse_link_xdp(&body[..8]), None);
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

    #[test]
    fn reader_sees_published_snapshots() {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(Snapshot::default())),
        });
        let (tx, mut rx) = mpsc::channel(4);
        let mut r = NeighReader {
            shared: shared.clone(),
            generation: 0,
            snap: Arc::new(Snapshot::default()),
            requests: tx,
        };
        let d: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(r.lookup(d).is_none());
        assert_eq!(rx.try_recv(), Ok(d), "a miss asks the control thread");
        let l2 = L2 {
            ifindex: 2,
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            src_addr: None,
            next_hop: d,
        };
        shared.publish(Snapshot {
            resolved: FastMap::from_iter([(d, l2)]),
            ..Snapshot::default()
        });
        assert!(r.lookup(d).is_none(), "not before refresh");
        r.refresh();
        assert_eq!(r.lookup(d), Some(l2));
        // Misses beyond the channel's room are dropped, never block.
        for _ in 0..10 {
            assert!(r.lookup("10.0.0.10".parse().unwrap()).is_none());
        }
    }
}
