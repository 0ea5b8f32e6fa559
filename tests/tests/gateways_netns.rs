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
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use xfrm_tests::{
    bpf_object, init_logging, root_or_skip,
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
        .run(|| {
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            // SAFETY: plain socket(2); owned at once.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
            anyhow::ensure!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            // SAFETY: a fresh fd nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(ifname)?;
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            // SAFETY: zeroed sockaddr_ll is valid; family, protocol and index set.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = index as i32;
            // SAFETY: valid fd and sockaddr_ll.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            anyhow::ensure!(
                r == 0,
                "bind AF_PACKET: {}",
                std::io::Error::last_os_error()
            );
            let size: libc::c_int = 64 << 20;
            // SAFETY: valid fd and an int option.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    4,
                )
            };
            Ok(fd)
        })
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
    let listener = t
        .ns(to)
        .run(|| Ok(TcpListener::bind((to_addr, port))?))
        .unwrap();
    let stream = t
        .ns(from)
        .run(|| {
            let s = TcpStream::connect_timeout(
                &format!("{to_addr}:{port}").parse()?,
                Duration::from_secs(5),
            )?;
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

#[test]
fn two_gateways_carry_traffic_both_ways() {
    if !root_or_skip("two_gateways_carry_traffic_both_ways") {
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
    t.ns(gwb)
        .ip(&["addr", "flush", "dev", &l3.b.ifname])
        .unwrap();
    t.ns(gwb)
        .ip(&["addr", "add", "10.2.0.2/24", "dev", &l3.b.ifname])
        .unwrap();
    t.ns(ha)
        .ip(&["route", "add", "10.4.0.0/24", "via", "10.1.0.2"])
        .unwrap();
    t.ns(hb)
        .ip(&["route", "add", "10.1.0.0/24", "via", "10.4.0.1"])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf_a = dir.path().join("a.conf");
    let conf_b = dir.path().join("b.conf");
    std::fs::write(
        &conf_a,
        config(
            "10.2.0.1",
            "10.2.0.2",
            "10.1.0.0/24",
            "10.4.0.0/24",
            0x100,
            0x200,
        ),
    )
    .unwrap();
    std::fs::write(
        &conf_b,
        config(
            "10.2.0.2",
            "10.2.0.1",
            "10.4.0.0/24",
            "10.1.0.0/24",
            0x200,
            0x100,
        ),
    )
    .unwrap();
    let opts = |config, inside: &str, outside: &str| RunOptions {
        config,
        inside: inside.to_string(),
        outside: outside.to_string(),
        queues: 1,
        mode: AttachMode::Native,
        bpf: Some(bpf_object()),
        interval: Duration::from_secs(1),
        duration: Some(Duration::from_secs(120)),
    };
    let oa = opts(conf_a, &l1.b.ifname, &l2.a.ifname);
    let ob = opts(conf_b, &l4.a.ifname, &l3.b.ifname);
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
            // kernel resolves it, so the first ping may be lost.
            let end = Instant::now() + Duration::from_secs(10);
            let mut up = false;
            while !up && Instant::now() < end {
                up = ping(topo, ha, "10.4.0.2") > 0;
            }
            assert!(up, "tunnel never came up");
            assert_eq!(ping(topo, ha, "10.4.0.2"), 5, "ping a -> b");
            assert_eq!(ping(topo, hb, "10.1.0.1"), 5, "ping b -> a");
            let data: Vec<u8> = (0..4u32 << 20)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            let started = Instant::now();
            let got = tcp_transfer(topo, ha, hb, "10.4.0.2", 7001, &data);
            eprintln!("4 MiB a -> b in {:?}", started.elapsed());
            assert!(got == data, "a -> b: {} bytes of {}", got.len(), data.len());
            let got = tcp_transfer(topo, hb, ha, "10.1.0.1", 7002, &data);
            assert!(got == data, "b -> a: {} bytes of {}", got.len(), data.len());
            // The hosts learned the tunnel's MTU from our ICMP errors.
            let r = topo.ns(ha).ip(&["route", "get", "10.4.0.2"]).unwrap();
            eprintln!("ha: {}", String::from_utf8_lossy(&r.stdout).trim());
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
    // kernel that met ESP before its redirect was attached), ARP, and the link's own IPv6
    // control traffic; no packet of the hosts in clear.
    let frames = drain(&wire_cap);
    let mut esp = 0;
    for f in &frames {
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        match ethertype {
            0x0806 => {}
            0x0800 => {
                let ip = &f[14..];
                assert_eq!(
                    &ip[12..15],
                    &[10, 2, 0],
                    "source on the wire: {:?}",
                    &ip[12..16]
                );
                assert_eq!(
                    &ip[16..19],
                    &[10, 2, 0],
                    "dest on the wire: {:?}",
                    &ip[16..20]
                );
                match ip[9] {
                    50 => esp += 1,
                    1 => assert_eq!(ip[20], 3, "only ICMP errors between the gateways"),
                    p => panic!("protocol {p} in clear on the wire"),
                }
            }
            // IPv6 neighbour discovery / MLD of the wire's own link: link-local or
            // unspecified source, never a host's address.
            0x86dd => {
                let src = &f[14 + 8..14 + 24];
                let link_local = src[0] == 0xfe && src[1] & 0xc0 == 0x80;
                assert!(
                    link_local || src.iter().all(|&b| b == 0),
                    "IPv6 on the wire from {src:02x?}"
                );
            }
            other => panic!("unexpected ethertype {other:#06x} on the wire"),
        }
    }
    eprintln!("wire: {} frames, {esp} ESP", frames.len());
    assert!(esp > 1000, "the transfers crossed as ESP");
}
