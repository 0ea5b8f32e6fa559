//! The classifier live on a veth pair in native mode (and generic mode): selected flows reach the AF_XDP socket
//! with their metadata, a frame written to the socket's TX ring reaches the peer, and everything
//! else (ARP, ND, ping, other flows) passes unchanged. Then fail closed: without the socket, the
//! selected flow is dropped, not delivered in clear.
//!
//!   ns "peer"  [a] ──veth── [b]  ns "gw": XDP classifier (native) + AF_XDP socket on queue 0
//!
//! The outside program on the same kind of link: ESP (raw socket), ESP in UDP 4500 and ESP
//! over IPv6 from the peer to the gateway's SAs reach the AF_XDP socket with the SA id; IKE
//! (zero marker) and a NAT-T keepalive reach the gateway's UDP socket on 4500; an unknown
//! SPI goes to the kernel; without the socket, inbound IPsec is dropped.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use xfrm_common::{
    Counter, META_F_INBOUND, META_F_IPV6, META_F_UDP_ENCAP, NO_POLICY, XDP_META_MAGIC,
};
use xfrm_tests::{
    bpf_object, init_logging,
    packet::{self, IPPROTO_UDP},
    root_or_skip, sa, sock,
    topology::{Link, Topology, VethOpts},
};
use xfrm_user::{
    datapath::{
        rules::compile_sorted,
        xsk::{XskConfig, XskSocket},
        AttachMode, Datapath,
    },
    policy::{Policy, PolicyAction, PolicyDir, Template, TmplLevel},
    sa::{XfrmMode, XfrmProto},
    selector::{PortMatch, Prefix, Selector},
    xfrm::XfrmDb,
};

const PORT_V4: u16 = 5555;
const PORT_V6: u16 = 5556;
const PORT_CLEAR: u16 = 6000;
const PORT_TX: u16 = 7000;

fn protect_udp(src: IpAddr, dst: IpAddr, dport: u16) -> Policy {
    Policy {
        selector: Selector {
            src: Prefix::host(src),
            dst: Prefix::host(dst),
            proto: IPPROTO_UDP,
            sport: PortMatch::ANY,
            dport: PortMatch::exact(dport),
        },
        dir: PolicyDir::Out,
        priority: 10,
        action: PolicyAction::Allow,
        templates: vec![Template {
            src: None,
            dst,
            proto: XfrmProto::Esp,
            spi: Some(0x100),
            reqid: 1,
            mode: XfrmMode::Tunnel,
            level: TmplLevel::Required,
        }],
        index: 0,
    }
}

/// Send one datagram from namespace `ns` (a fresh thread inside it).
fn send_udp(topo: &Topology, ns: usize, from: IpAddr, to: SocketAddr, payload: &[u8]) {
    topo.ns(ns)
        .run(|| {
            let s = UdpSocket::bind(SocketAddr::new(from, 0))?;
            s.send_to(payload, to)?;
            Ok(())
        })
        .expect("send UDP from the peer namespace");
}

fn ping(topo: &Topology, ns: usize, dst: IpAddr) -> bool {
    let out = topo
        .ns(ns)
        .command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "2", &dst.to_string()])
        .output()
        .expect("ping (iputils-ping; `cargo xtask setup` installs it)");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
    out.status.success()
}

/// A UDP socket in namespace `ns`, for receiving.
fn udp_socket_in(topo: &Topology, ns: usize, at: SocketAddr) -> UdpSocket {
    topo.ns(ns)
        .run(|| {
            let s = UdpSocket::bind(at)?;
            s.set_read_timeout(Some(Duration::from_millis(1500)))?;
            Ok(s)
        })
        .expect("bind UDP socket in namespace")
}

fn recv_payload(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

/// Frames received on the socket within `wait` (copied out).
fn drain(xsk: &mut XskSocket, wait: Duration) -> Vec<(Option<xfrm_common::XdpMeta>, Vec<u8>)> {
    let mut got = Vec::new();
    let end = Instant::now() + wait;
    while Instant::now() < end {
        xsk.recv(Duration::from_millis(100), |f| {
            got.push((f.meta, f.packet.to_vec()))
        })
        .expect("AF_XDP receive");
        if !got.is_empty() {
            // Give stragglers one more round.
            xsk.recv(Duration::from_millis(100), |f| {
                got.push((f.meta, f.packet.to_vec()))
            })
            .expect("AF_XDP receive");
            break;
        }
    }
    got
}

fn veth_redirect(test: &str, mode: AttachMode, tx_checksum: bool) {
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let mut topo = Topology::new().unwrap();
    let peer = topo.add_netns("peer").unwrap();
    let gw = topo.add_netns("gw").unwrap();
    let Link { a, b } = topo
        .add_veth(
            peer,
            gw,
            VethOpts {
                tx_checksum,
                ..VethOpts::default()
            },
        )
        .unwrap();
    let (a4, b4, a6, b6) = (
        IpAddr::V4(a.ipv4),
        IpAddr::V4(b.ipv4),
        IpAddr::V6(a.ipv6),
        IpAddr::V6(b.ipv6),
    );

    let mut policies = vec![protect_udp(a4, b4, PORT_V4), protect_udp(a6, b6, PORT_V6)];
    policies[1].index = 1;
    let db = XfrmDb::new(vec![], policies).unwrap();
    // Equal priorities: the db keeps config order, so policy_id = config index here.
    let rules = compile_sorted(db.policies(PolicyDir::Out)).unwrap();

    let topo = &topo;
    topo.ns(gw)
        .run(|| {
            let mut dp = Datapath::load(&bpf_object())?;
            dp.attach_classifier(&b.ifname, mode)?;
            // The peer runs the pass-everything program: what a veth needs to accept
            // XDP_TX/redirected frames, and it must leave the peer's own traffic alone.
            topo.ns(peer).run(|| dp.attach_pass(&a.ifname, mode))?;
            dp.set_out_policies(&rules)?;
            let mut xsk = XskSocket::bind(&b.ifname, 0, XskConfig::default())?;
            dp.set_socket(0, xsk.fd())?;

            // Unselected traffic passes: ping needs ARP (and ND for v6) and ICMP through.
            assert!(ping(topo, peer, b4), "IPv4 ping through the classifier");
            assert!(
                ping(topo, peer, b6),
                "IPv6 ping (ND) through the classifier"
            );
            // An unselected UDP flow reaches the gateway's own socket, unchanged.
            let clear = udp_socket_in(topo, gw, SocketAddr::new(b4, PORT_CLEAR));
            send_udp(
                topo,
                peer,
                a4,
                SocketAddr::new(b4, PORT_CLEAR),
                b"in the clear",
            );
            assert_eq!(recv_payload(&clear).as_deref(), Some(&b"in the clear"[..]));

            // Selected flows go to the socket, not to the stack: a socket on the same port
            // gets nothing.
            let stolen = udp_socket_in(topo, gw, SocketAddr::new(b4, PORT_V4));
            send_udp(
                topo,
                peer,
                a4,
                SocketAddr::new(b4, PORT_V4),
                b"protect me v4",
            );
            send_udp(
                topo,
                peer,
                a6,
                SocketAddr::new(b6, PORT_V6),
                b"protect me v6",
            );
            let mut frames = drain(&mut xsk, Duration::from_secs(3));
            if frames.len() < 2 {
                frames.extend(drain(&mut xsk, Duration::from_secs(2)));
            }
            assert_eq!(
                frames.len(),
                2,
                "both selected datagrams on the AF_XDP socket"
            );
            for (meta, frame) in &frames {
                let m = meta.expect("metadata in front of the frame");
                assert_eq!(m.magic, XDP_META_MAGIC);
                let v6 = m.flags & META_F_IPV6 != 0;
                let (src, dst, policy, l4) = if v6 { (a6, b6, 1, 54) } else { (a4, b4, 0, 34) };
                assert_eq!((m.policy_id, m.l3_offset), (policy, 14));
                let udp = &frame[l4 as usize..];
                let payload: &[u8] = if v6 {
                    b"protect me v6"
                } else {
                    b"protect me v4"
                };
                assert_eq!(&udp[8..], payload);
                assert_eq!(&frame[0..6], &b.mac, "sent to the gateway's MAC");
                // veth checksum offload: the sender left CHECKSUM_PARTIAL, so the field holds
                // only the pseudo-header sum; with `tx off` the checksum is complete.
                let csum = u16::from_be_bytes([udp[6], udp[7]]);
                if tx_checksum {
                    assert_eq!(
                        csum,
                        packet::partial_checksum(src, dst, IPPROTO_UDP, udp.len()),
                        "offload on: partial checksum expected"
                    );
                } else {
                    assert!(
                        packet::l4_checksum_ok(src, dst, IPPROTO_UDP, udp),
                        "tx off: full checksum expected"
                    );
                }
            }
            assert_eq!(
                recv_payload(&stolen),
                None,
                "a redirected datagram also reached the stack"
            );

            // TX ring → peer: a frame we build arrives at a socket in the peer namespace.
            let rx_peer = udp_socket_in(topo, peer, SocketAddr::new(a4, PORT_TX));
            let l4 = packet::l4(b4, a4, IPPROTO_UDP, 40000, PORT_TX, b"from the TX ring");
            let ip = packet::ipv4(b.ipv4, a.ipv4, IPPROTO_UDP, 0x4000, &l4);
            let frame = packet::ethernet(a.mac, b.mac, None, packet::ETH_P_IP, &ip);
            xsk.send(&frame)?;
            assert_eq!(
                recv_payload(&rx_peer).as_deref(),
                Some(&b"from the TX ring"[..])
            );
            xsk.reap();

            let c = dp.counters()?;
            assert_eq!(c.get(Counter::Redirect), 2, "{c}");
            assert!(
                c.get(Counter::PassArpNd) >= 2,
                "ARP and ND seen and passed: {c}"
            );
            assert!(
                c.get(Counter::PassNoPolicy) >= 5,
                "pings and the clear flow: {c}"
            );
            assert_eq!(c.get(Counter::DropNoSocket), 0, "{c}");

            // Fail closed: the worker's socket gone, the selected flow is dropped, neither
            // redirected nor delivered in clear.
            dp.clear_socket(0)?;
            send_udp(topo, peer, a4, SocketAddr::new(b4, PORT_V4), b"no worker");
            assert_eq!(
                recv_payload(&stolen),
                None,
                "fail open: delivered without a worker"
            );
            let c = dp.counters()?;
            assert_eq!(c.get(Counter::DropNoSocket), 1, "{c}");
            // And unselected traffic still flows.
            assert!(ping(topo, peer, b4));
            dp.flush_logs();
            Ok(())
        })
        .unwrap();
}

#[test]
fn veth_native_redirect_tx_and_pass() {
    veth_redirect("veth_native_redirect_tx_and_pass", AttachMode::Native, true);
}

#[test]
fn veth_native_redirect_tx_checksum_off() {
    veth_redirect(
        "veth_native_redirect_tx_checksum_off",
        AttachMode::Native,
        false,
    );
}

/// Generic (skb) XDP: the same verdicts and metadata, for interfaces without native XDP.
#[test]
fn veth_skb_redirect_tx_and_pass() {
    veth_redirect("veth_skb_redirect_tx_and_pass", AttachMode::Skb, true);
}

/// ESP from namespace `ns` through a raw socket (the kernel adds the IP header).
fn send_esp(topo: &Topology, ns: usize, to: IpAddr, spi: u32) {
    topo.ns(ns)
        .run(|| {
            let sa = SocketAddr::new(to, 0);
            let sock = sock::esp_socket(to.is_ipv6(), 0)?;
            let mut payload = spi.to_be_bytes().to_vec();
            payload.extend(1u32.to_be_bytes());
            payload.extend([0xa5; 48]);
            let (addr, len) = sockaddr(sa);
            // SAFETY: a valid buffer and sockaddr of the given lengths.
            let n = unsafe {
                libc::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    (&addr as *const libc::sockaddr_storage).cast(),
                    len,
                )
            };
            anyhow::ensure!(n >= 0, "sendto ESP: {}", std::io::Error::last_os_error());
            Ok(())
        })
        .expect("send ESP from the peer namespace");
}

fn sockaddr(sa: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match sa {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (st, len as libc::socklen_t)
}

#[test]
fn veth_outside_inbound_ipsec_and_ike() {
    if !root_or_skip("veth_outside_inbound_ipsec_and_ike") {
        return;
    }
    init_logging();
    let mut topo = Topology::new().unwrap();
    let peer = topo.add_netns("peer").unwrap();
    let gw = topo.add_netns("gw").unwrap();
    let Link { a, b } = topo.add_veth(peer, gw, VethOpts::default()).unwrap();
    let (a4, b4, a6, b6) = (
        IpAddr::V4(a.ipv4),
        IpAddr::V4(b.ipv4),
        IpAddr::V6(a.ipv6),
        IpAddr::V6(b.ipv6),
    );
    let db = XfrmDb::new(
        vec![
            sa::esp(0x3001, a4, b4),
            sa::esp_in_udp(0x3002, a4, b4, 4500, false),
            sa::esp(0x3003, a6, b6),
        ],
        vec![],
    )
    .unwrap();

    let topo = &topo;
    topo.ns(gw)
        .run(|| {
            let mut dp = Datapath::load(&bpf_object())?;
            dp.install(&db)?;
            dp.attach_outside(&b.ifname, AttachMode::Native)?;
            topo.ns(peer)
                .run(|| dp.attach_pass(&a.ifname, AttachMode::Native))?;
            let mut xsk = XskSocket::bind(&b.ifname, 0, XskConfig::default())?;
            dp.set_outside_socket(0, xsk.fd())?;

            // The host's own traffic passes: ARP, ND, ping.
            assert!(
                ping(topo, peer, b4),
                "IPv4 ping through the outside program"
            );
            assert!(
                ping(topo, peer, b6),
                "IPv6 ping (ND) through the outside program"
            );

            // Inbound IPsec for our SAs: to the socket, with the SA id.
            send_esp(topo, peer, b4, 0x3001);
            send_esp(topo, peer, b6, 0x3003);
            let mut natt = 0x3002u32.to_be_bytes().to_vec();
            natt.extend([0x5a; 40]);
            send_udp_from(
                topo,
                peer,
                SocketAddr::new(a4, 4500),
                SocketAddr::new(b4, 4500),
                &natt,
            );
            let mut frames = drain(&mut xsk, Duration::from_secs(3));
            if frames.len() < 3 {
                frames.extend(drain(&mut xsk, Duration::from_secs(2)));
            }
            let mut got: Vec<u16> = frames
                .iter()
                .map(|(m, _)| {
                    let m = m.expect("metadata in front of the frame");
                    assert_eq!((m.magic, m.policy_id), (XDP_META_MAGIC, NO_POLICY));
                    assert_ne!(m.flags & META_F_INBOUND, 0);
                    m.flags & (META_F_IPV6 | META_F_UDP_ENCAP)
                })
                .collect();
            got.sort_unstable();
            assert_eq!(
                got,
                [0, META_F_IPV6, META_F_UDP_ENCAP],
                "the three inbound packets, each marked as it came"
            );
            for (_, f) in &frames {
                assert_eq!(&f[0..6], &b.mac, "sent to the gateway's MAC");
            }

            // IKE on 4500 (non-ESP marker) and a keepalive reach the gateway's socket.
            let ike_sock = udp_socket_in(topo, gw, SocketAddr::new(b4, 4500));
            let mut ike = vec![0u8; 4];
            ike.extend(b"IKE_SA_INIT....................");
            send_udp_from(
                topo,
                peer,
                SocketAddr::new(a4, 4500),
                SocketAddr::new(b4, 4500),
                &ike,
            );
            assert_eq!(recv_payload(&ike_sock).as_deref(), Some(&ike[..]));
            send_udp_from(
                topo,
                peer,
                SocketAddr::new(a4, 4500),
                SocketAddr::new(b4, 4500),
                &[0xff],
            );
            assert_eq!(recv_payload(&ike_sock).as_deref(), Some(&[0xffu8][..]));
            // An unknown SPI is the kernel's, not the worker's.
            send_esp(topo, peer, b4, 0x9999);
            std::thread::sleep(Duration::from_millis(200));
            assert!(drain(&mut xsk, Duration::from_millis(300)).is_empty());

            let c = dp.outside_counters()?;
            assert_eq!(c.get(Counter::RedirectIn), 3, "{c}");
            assert_eq!(c.get(Counter::PassIke), 1, "{c}");
            assert_eq!(c.get(Counter::PassNattKeepalive), 1, "{c}");
            assert_eq!(c.get(Counter::PassUnknownSpi), 1, "{c}");
            assert!(c.get(Counter::PassArpNd) >= 2, "{c}");
            assert!(c.get(Counter::PassNotIpsec) >= 4, "pings: {c}");

            // Without the worker's socket, inbound IPsec is dropped, not given to the kernel.
            dp.clear_outside_socket(0)?;
            send_esp(topo, peer, b4, 0x3001);
            std::thread::sleep(Duration::from_millis(300));
            let c = dp.outside_counters()?;
            assert_eq!(c.get(Counter::DropNoSocketIn), 1, "{c}");
            assert!(ping(topo, peer, b4));
            dp.flush_logs();
            Ok(())
        })
        .unwrap();
}

/// A datagram from a fixed source port (IKE and NAT-T come from 4500).
fn send_udp_from(topo: &Topology, ns: usize, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    topo.ns(ns)
        .run(|| {
            let s = UdpSocket::bind(from)?;
            s.send_to(payload, to)?;
            Ok(())
        })
        .expect("send UDP from the peer namespace");
}
