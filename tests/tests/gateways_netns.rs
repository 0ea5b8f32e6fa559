//! Two gateways running `xfrm-user run` (the library function behind it), traffic both ways:
//!
//!   ns "ha" ──veth 1── ns "gwa" ══veth 2══ ns "wire" (bridge) ══veth 3══ ns "gwb" ──veth 4── ns "hb"
//!   10.1.0.1    10.1.0.2 | 10.2.0.1                              10.2.0.2 | 10.4.0.1    10.4.0.2
//!
//! The capture is an AF_PACKET socket on the wire namespace's bridge port (a gateway's own
//! interface would not show it: XDP takes inbound frames before the taps, and AF_XDP copy-mode
//! transmit bypasses them).
//!
//! The gateways do not forward (ip_forward 0): what crosses went through the workers. ESP
//! tunnel mode, one SA each way. Veth TX checksum offload stays on (partial checksums).
//! Checked: ping both ways; a TCP transfer both ways with equal bytes at the other end (TCP
//! sets DF and its 1500-byte segments do not fit the tunnel: it only works if our ICMP
//! fragmentation-needed teaches the hosts the tunnel's MTU); the wire carries only ESP and
//! ARP, no packet of the hosts in clear.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use xfrm_tests::{
    bpf_object, init_logging, root_or_skip, sock,
    topology::{Topology, VethOpts},
};
use xfrm_user::datapath::{
    run::{run, RunOptions},
    AttachMode,
};

const KEY_AB: &str = "0x0102030405060708090a0b0c0d0e0f1011121314";
const KEY_BA: &str = "0x2122232425262728292a2b2c2d2e2f3031323334";

fn config(me: &str, peer: &str, mine: &str, theirs: &str, spi_out: u32, spi_in: u32) -> String {
    let (k_out, k_in) = if spi_out == 0x100 {
        (KEY_AB, KEY_BA)
    } else {
        (KEY_BA, KEY_AB)
    };
    format!(
        "ip xfrm state add src {me} dst {peer} proto esp spi {spi_out:#x} reqid 1 mode tunnel \
         replay-window 128 aead 'rfc4106(gcm(aes))' {k_out} 128\n\
         ip xfrm state add src {peer} dst {me} proto esp spi {spi_in:#x} reqid 2 mode tunnel \
         replay-window 128 aead 'rfc4106(gcm(aes))' {k_in} 128\n\
         ip xfrm policy add src {mine} dst {theirs} dir out \
         tmpl src {me} dst {peer} proto esp reqid 1 mode tunnel\n\
         ip xfrm policy add src {theirs} dst {mine} dir fwd \
         tmpl src {peer} dst {me} proto esp reqid 2 mode tunnel\n"
    )
}

/// An AF_PACKET socket on `ifname` in namespace `ns`: every frame of the wire.
fn capture(t: &Topology, ns: usize, ifname: &str) -> OwnedFd {
    t.ns(ns)
        .run(|| sock::packet_socket(ifname, 64 << 20))
        .unwrap()
}

/// Every frame waiting on the capture socket.
fn drain(fd: &OwnedFd) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: valid fd, writes at most buf.len() bytes.
        let k = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if k <= 0 {
            return out;
        }
        out.push(buf[..k as usize].to_vec());
    }
}

fn ping(t: &Topology, ns: usize, dst: &str) -> u32 {
    let out = t
        .ns(ns)
        .command("ping")
        .args(["-c", "5", "-i", "0.2", "-W", "1", dst])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    s.split(" received")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `len` bytes from `from` (ns) to `to_addr`:port in ns `to`; returns what arrived.
fn tcp_transfer(
    t: &Topology,
    from: usize,
    to: usize,
    to_addr: &str,
    port: u16,
    data: &[u8],
) -> Vec<u8> {
    let at = SocketAddr::new(to_addr.parse().unwrap(), port);
    let listener = t.ns(to).run(|| Ok(TcpListener::bind(at)?)).unwrap();
    let stream = t
        .ns(from)
        .run(|| {
            let s = TcpStream::connect_timeout(&at, Duration::from_secs(5))?;
            s.set_write_timeout(Some(Duration::from_secs(20)))?;
            Ok(s)
        })
        .unwrap();
    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let (mut c, _) = listener.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            got
        });
        let mut stream = stream;
        stream.write_all(data).unwrap();
        drop(stream);
        rx.join().unwrap()
    })
}

/// Addresses of one run: outer (the wire) and inner (the hosts) families chosen apart.
struct Plan {
    gwa: &'static str,
    gwb: &'static str,
    gwb_prefix: &'static str,
    ha: &'static str,
    hb: &'static str,
    net_a: &'static str,
    net_b: &'static str,
    via_a: &'static str,
    via_b: &'static str,
    /// The MTU the hosts should learn: what the ESP tunnel SA leaves of 1500.
    mtu: u32,
}

const V4: Plan = Plan {
    gwa: "10.2.0.1",
    gwb: "10.2.0.2",
    gwb_prefix: "10.2.0.2/24",
    ha: "10.1.0.1",
    hb: "10.4.0.2",
    net_a: "10.1.0.0/24",
    net_b: "10.4.0.0/24",
    via_a: "10.1.0.2",
    via_b: "10.4.0.1",
    // esp4 tunnel, GCM ICV 16: ((1500 - 20 - 8 - 8 - 16) & !3) - 2
    mtu: 1446,
};

const V6: Plan = Plan {
    gwa: "fd00:2::1",
    gwb: "fd00:2::2",
    gwb_prefix: "fd00:2::2/64",
    ha: "fd00:1::1",
    hb: "fd00:4::2",
    net_a: "fd00:1::/64",
    net_b: "fd00:4::/64",
    via_a: "fd00:1::2",
    via_b: "fd00:4::1",
    // esp6 tunnel, GCM ICV 16: ((1500 - 40 - 8 - 8 - 16) & !3) - 2
    mtu: 1426,
};

#[test]
fn two_gateways_carry_traffic_both_ways() {
    two_gateways("two_gateways_carry_traffic_both_ways", &V4);
}

#[test]
fn two_gateways_ipv6_inside_and_outside() {
    two_gateways("two_gateways_ipv6_inside_and_outside", &V6);
}

fn two_gateways(name: &str, p: &Plan) {
    if !root_or_skip(name) {
        return;
    }
    init_logging();
    let mut t = Topology::new().unwrap();
    let ha = t.add_netns("ha").unwrap();
    let gwa = t.add_netns("gwa").unwrap();
    let wns = t.add_netns("wire").unwrap();
    let gwb = t.add_netns("gwb").unwrap();
    let hb = t.add_netns("hb").unwrap();
    let l1 = t.add_veth(ha, gwa, VethOpts::default()).unwrap();
    let l2 = t.add_veth(gwa, wns, VethOpts::default()).unwrap();
    let l3 = t.add_veth(wns, gwb, VethOpts::default()).unwrap();
    let l4 = t.add_veth(gwb, hb, VethOpts::default()).unwrap();
    // The wire: a bridge of two ports without addresses; gwb's wire address in gwa's subnet.
    let w = t.ns(wns);
    // No multicast snooping: its IGMP queries (from 0.0.0.0) are not ours to judge.
    w.ip(&[
        "link",
        "add",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ])
    .unwrap();
    for port in [&l2.b.ifname, &l3.a.ifname] {
        w.ip(&["addr", "flush", "dev", port]).unwrap();
        w.ip(&["link", "set", port, "master", "br0"]).unwrap();
    }
    w.ip(&["link", "set", "br0", "up"]).unwrap();
    let g = t.ns(gwb);
    // Replace the helper's addresses (keep the link-local one: the kernel sends neighbour
    // solicitations of its own from it).
    let (v4, v6) = (format!("{}/24", l3.b.ipv4), format!("{}/64", l3.b.ipv6));
    g.ip(&["addr", "del", &v4, "dev", &l3.b.ifname]).unwrap();
    g.ip(&["addr", "del", &v6, "dev", &l3.b.ifname]).unwrap();
    let nodad: &[&str] = if p.gwb.contains(':') { &["nodad"] } else { &[] };
    let mut add = vec!["addr", "add", p.gwb_prefix, "dev", &l3.b.ifname];
    add.extend_from_slice(nodad);
    g.ip(&add).unwrap();
    t.ns(ha)
        .ip(&["route", "add", p.net_b, "via", p.via_a])
        .unwrap();
    t.ns(hb)
        .ip(&["route", "add", p.net_a, "via", p.via_b])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf_a = dir.path().join("a.conf");
    let conf_b = dir.path().join("b.conf");
    xfrm_user::keyfile::write_private(
        &conf_a,
        config(p.gwa, p.gwb, p.net_a, p.net_b, 0x100, 0x200),
    )
    .unwrap();
    xfrm_user::keyfile::write_private(
        &conf_b,
        config(p.gwb, p.gwa, p.net_b, p.net_a, 0x200, 0x100),
    )
    .unwrap();
    let opts = |config, state, inside: &str, outside: &str| RunOptions {
        config,
        inside: inside.to_string(),
        outside: outside.to_string(),
        queues: 1,
        mode: AttachMode::Native,
        bpf: Some(bpf_object()),
        interval: Duration::from_secs(1),
        duration: Some(Duration::from_secs(120)),
        local_dev: Some(xfrm_user::datapath::tap::DEFAULT_LOCAL_DEV.to_string()),
        state: Some(state),
        discard_corrupt_state: false,
        // What this test checks ends with the traffic; stopping is run_netns's and
        // failclosed_kill9's.
        detach_on_exit: true,
        handle_signals: false,
        bench_null_transform: false,
        ctl: None,
        drop_privileges: true,
        user: None,
    };
    let oa = opts(
        conf_a,
        dir.path().join("a.state"),
        &l1.b.ifname,
        &l2.a.ifname,
    );
    let ob = opts(
        conf_b,
        dir.path().join("b.state"),
        &l4.a.ifname,
        &l3.b.ifname,
    );
    let wire_cap = capture(&t, wns, &l2.b.ifname);
    let stop = AtomicBool::new(false);
    let topo = &t;
    std::thread::scope(|s| {
        let ga = s.spawn(|| {
            topo.ns(gwa).run(|| {
                let mut out = Vec::new();
                let r = run(&oa, &stop, &mut out);
                eprint!("gwa: {}", String::from_utf8_lossy(&out));
                r
            })
        });
        let gb = s.spawn(|| {
            topo.ns(gwb).run(|| {
                let mut out = Vec::new();
                let r = run(&ob, &stop, &mut out);
                eprint!("gwb: {}", String::from_utf8_lossy(&out));
                r
            })
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Up: the first packets to a host the cache has not met are dropped while the
            // kernel resolves it, so the first ping may be lost. Both gateways load and verify
            // their programs meanwhile, which took over 10 s on a loaded 2-core machine.
            let end = Instant::now() + Duration::from_secs(60);
            let mut up = false;
            while !up && Instant::now() < end {
                up = ping(topo, ha, p.hb) > 0;
            }
            assert!(up, "tunnel never came up");
            assert_eq!(ping(topo, ha, p.hb), 5, "ping a -> b");
            assert_eq!(ping(topo, hb, p.ha), 5, "ping b -> a");
            let data: Vec<u8> = (0..4u32 << 20)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            let started = Instant::now();
            let got = tcp_transfer(topo, ha, hb, p.hb, 7001, &data);
            eprintln!("4 MiB a -> b in {:?}", started.elapsed());
            assert!(got == data, "a -> b: {} bytes of {}", got.len(), data.len());
            let got = tcp_transfer(topo, hb, ha, p.ha, 7002, &data);
            assert!(got == data, "b -> a: {} bytes of {}", got.len(), data.len());
            // TCP's full-size segments did not fit the tunnel: the hosts learned its MTU from
            // our ICMP errors.
            let r = topo.ns(ha).ip(&["route", "get", p.hb]).unwrap();
            let r = String::from_utf8_lossy(&r.stdout).into_owned();
            assert!(r.contains(&format!("mtu {}", p.mtu)), "ha: {r}");
        }));
        stop.store(true, Ordering::Relaxed);
        let ra = ga.join().unwrap();
        let rb = gb.join().unwrap();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
        ra.unwrap();
        rb.unwrap();
    });

    // The wire: between the gateways' addresses only (ESP, and ICMP errors from a gateway
    // kernel that met ESP before its redirect was attached), ARP, and the link's own
    // control traffic (ND/MLD); no packet of the hosts in clear.
    let frames = drain(&wire_cap);
    let mut esp = 0;
    let gw4 = |a: &[u8]| a[..3] == [10, 2, 0];
    let gw6 = |a: &[u8]| a[..8] == [0xfd, 0, 0, 2, 0, 0, 0, 0];
    for f in &frames {
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        match ethertype {
            0x0806 => {}
            0x0800 => {
                let ip = &f[14..];
                assert!(
                    gw4(&ip[12..16]) && gw4(&ip[16..20]),
                    "IPv4 on the wire: {:?}",
                    &ip[12..20]
                );
                match ip[9] {
                    50 => esp += 1,
                    1 => assert_eq!(ip[20], 3, "only ICMP errors between the gateways"),
                    p => panic!("protocol {p} in clear on the wire"),
                }
            }
            0x86dd => {
                let ip = &f[14..];
                let (src, dst) = (&ip[8..24], &ip[24..40]);
                let link_local = src[0] == 0xfe && src[1] & 0xc0 == 0x80;
                let unspecified = src.iter().all(|&b| b == 0);
                if ip[6] == 50 && gw6(src) && gw6(dst) {
                    esp += 1;
                } else if link_local || unspecified || (gw6(src) && ip[6] == 58) {
                    // Neighbour discovery, MLD, ICMPv6 errors between the gateways.
                } else {
                    panic!(
                        "IPv6 on the wire from {src:02x?} to {dst:02x?}, next header {}",
                        ip[6]
                    );
                }
            }
            other => panic!("unexpected ethertype {other:#06x} on the wire"),
        }
    }
    eprintln!("wire: {} frames, {esp} ESP", frames.len());
    assert!(esp > 1000, "the transfers crossed as ESP");
}
