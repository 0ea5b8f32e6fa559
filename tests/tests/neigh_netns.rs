//! The neighbour cache against a real kernel, inside namespaces made by the test:
//!
//!   ns "p1" [a] ──veth 1── [b] ns "gw" [a] ──veth 2── [b] ns "p2"
//!
//! In "gw": 10.77.0.0/24 and fd00:77::/64 are routed via p1. The cache must find the route,
//! get the kernel to resolve p1 (the fresh namespace has no neighbour entry), follow
//! `ip neigh change`, and follow a route change to p2 (with a route MTU).

use std::{net::IpAddr, time::Duration};

use xfrm_tests::{
    root_or_skip,
    topology::{Topology, VethOpts},
};
use xfrm_user::datapath::neigh::{NeighOptions, NeighService, Rtnl};

const WAIT: Duration = Duration::from_secs(5);

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn routes_neighbours_and_changes() {
    if !root_or_skip("routes_neighbours_and_changes") {
        return;
    }
    let mut t = Topology::new().unwrap();
    let p1 = t.add_netns("p1").unwrap();
    let gw = t.add_netns("gw").unwrap();
    let p2 = t.add_netns("p2").unwrap();
    let opts = VethOpts {
        native_xdp: false,
        ..VethOpts::default()
    };
    let l1 = t.add_veth(p1, gw, opts).unwrap();
    let l2 = t.add_veth(gw, p2, opts).unwrap();
    let g = t.ns(gw);
    g.ip(&[
        "route",
        "add",
        "10.77.0.0/24",
        "via",
        &l1.a.ipv4.to_string(),
    ])
    .unwrap();
    g.ip(&[
        "-6",
        "route",
        "add",
        "fd00:77::/64",
        "via",
        &l1.a.ipv6.to_string(),
    ])
    .unwrap();
    let far4 = addr("10.77.0.9");
    let far6 = addr("fd00:77::9");

    // Start in gw; nothing resolved yet: the kernel has no entry for p1.
    let (svc, gw_if1, gw_if2) = g
        .run(|| {
            let mut rtnl = Rtnl::new()?;
            let if1 = rtnl.link_by_name(&l1.b.ifname)?;
            let if2 = rtnl.link_by_name(&l2.a.ifname)?;
            assert_eq!(rtnl.neigh_get(if1.index, IpAddr::V4(l1.a.ipv4))?, None);
            let svc = NeighService::start(
                &[far4],
                NeighOptions {
                    poke_interval: Duration::from_millis(500),
                    retry_interval: Duration::from_millis(200),
                },
            )?;
            Ok((svc, if1, if2))
        })
        .unwrap();
    assert_eq!(gw_if1.mac, l1.b.mac, "the interface's own MAC");
    assert_eq!(gw_if1.mtu, 1500);

    // Route lookup + resolution triggered by the cache (primed destination).
    let e4 = svc.wait_resolved(far4, WAIT).expect("10.77.0.9 resolves");
    assert_eq!(
        e4.next_hop,
        IpAddr::V4(l1.a.ipv4),
        "next hop is the gateway"
    );
    assert_eq!(e4.dst_mac, l1.a.mac, "p1's MAC, learned by the kernel");
    assert_eq!(e4.src_mac, l1.b.mac);
    assert_eq!(e4.ifindex, gw_if1.index);
    assert_eq!(e4.mtu, 1500);
    assert_eq!(e4.src_addr, Some(IpAddr::V4(l1.b.ipv4)));

    // IPv6, asked the way a worker asks: a miss, then it resolves (neighbour solicitation).
    let mut reader = svc.reader();
    reader.refresh();
    assert!(reader.lookup(far6).is_none());
    let e6 = svc.wait_resolved(far6, WAIT).expect("fd00:77::9 resolves");
    assert_eq!(e6.next_hop, IpAddr::V6(l1.a.ipv6));
    assert_eq!(e6.dst_mac, l1.a.mac);
    assert_eq!(e6.src_addr, Some(IpAddr::V6(l1.b.ipv6)));
    // An on-link destination is its own next hop.
    let on_link = svc
        .wait_resolved(IpAddr::V4(l2.b.ipv4), WAIT)
        .expect("p2 resolves");
    assert_eq!(on_link.next_hop, IpAddr::V4(l2.b.ipv4));
    assert_eq!(on_link.dst_mac, l2.b.mac);
    assert_eq!(on_link.ifindex, gw_if2.index);

    // `ip neigh change`: the reader sees the new MAC after a refresh.
    let new_mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    g.ip(&[
        "neigh",
        "change",
        &l1.a.ipv4.to_string(),
        "lladdr",
        "02:11:22:33:44:55",
        "dev",
        &l1.b.ifname,
    ])
    .unwrap();
    let seen = wait_for(|| {
        reader.refresh();
        reader.lookup(far4).filter(|e| e.dst_mac == new_mac)
    });
    assert!(seen.is_some(), "neighbour change not seen");

    // Route change: 10.77.0.0/24 via p2 with a route MTU of 1400.
    g.ip(&[
        "route",
        "replace",
        "10.77.0.0/24",
        "via",
        &l2.b.ipv4.to_string(),
        "mtu",
        "lock",
        "1400",
    ])
    .unwrap();
    let moved = wait_for(|| {
        reader.refresh();
        reader.lookup(far4).filter(|e| e.ifindex == gw_if2.index)
    })
    .expect("route change not seen");
    assert_eq!(moved.next_hop, IpAddr::V4(l2.b.ipv4));
    assert_eq!(moved.dst_mac, l2.b.mac);
    assert_eq!(moved.src_mac, l2.a.mac);
    assert_eq!(moved.mtu, 1400);

    // The interface's MTU changes: the on-link destination follows it.
    g.ip(&["link", "set", "dev", &l2.a.ifname, "mtu", "1300"])
        .unwrap();
    let p2v4 = IpAddr::V4(l2.b.ipv4);
    let smaller = wait_for(|| {
        reader.refresh();
        reader.lookup(p2v4).filter(|e| e.mtu == 1300)
    });
    assert!(smaller.is_some(), "link MTU change not seen");
    // Our source address towards a destination comes with its route.
    assert_eq!(reader.src_towards(p2v4), Some(IpAddr::V4(l2.a.ipv4)));

    // The neighbour goes away (p2's address removed, entry flushed): the destination stops
    // resolving instead of using a dead MAC.
    t.ns(p2)
        .ip(&[
            "addr",
            "del",
            &format!("{}/24", l2.b.ipv4),
            "dev",
            &l2.b.ifname,
        ])
        .unwrap();
    g.ip(&["neigh", "flush", "dev", &l2.a.ifname]).unwrap();
    let gone = wait_for(|| {
        reader.refresh();
        reader.lookup(far4).is_none().then_some(())
    });
    assert!(gone.is_some(), "flushed neighbour still in the cache");
    drop(svc);
}

fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
