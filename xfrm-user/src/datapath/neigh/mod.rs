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

mod cache;
mod netlink;
mod service;
mod xdp;

use std::net::IpAddr;

pub use cache::{Hop, NeighReader, Snapshot, L2};
pub use netlink::{nud, Link, Neigh, Route, Rtnl};
pub use service::{interface, NeighOptions, NeighService};
pub use xdp::{XdpAttachMode, XdpProg};

use netlink::{messages, parse_link, parse_neigh, parse_route};
use xdp::parse_link_xdp;

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
