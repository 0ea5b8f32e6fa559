//! Clear text that the far gateway's `dir fwd` / `dir in` policies want protected never gets
//! through it (the kernel's __xfrm_policy_check, done by the outside XDP program), end to end
//! on the two-gateway topology (xfrm_tests::gateway):
//!
//! ```text
//!  host-a ── gw-a ══ wire ══ gw-b ── host-b      (frames injected in `wire`, towards gw-b)
//! ```
//!
//! gw-b's configuration (the gateway tests' own) has `in` and `fwd` policies from host-a's LAN
//! to host-b's LAN with an ESP template. Frames are written onto the wire towards gw-b by a
//! packet socket in `wire`, with host-a's LAN as the source, as an attacker on the wire (or a
//! peer that forgot to encrypt) would:
//!
//! - to host-b, UDP (fwd: required template) — must not reach host-b;
//! - to host-b from the wire router's own address (no policy) — must reach it;
//! - to gw-b's inside address, UDP (in: required template) — must not reach gw-b's socket;
//! - to gw-b's inside address, UDP 500 (IKE: the IKE daemon's socket bypasses the policy) —
//!   must reach it.
//!
//! Without the daemons (phase 1, the control) gw-b is a plain router and all four arrive: the
//! test can see a leak. With them (phase 2, after the tunnel carried pings both ways) only the
//! last two kinds arrive, and gw-b's outside program counted the two refusals
//! (drop_in_tmpl_mismatch in its counter line).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging, packet, root_or_skip,
    scenario::{daemon_logs, heavy, report, start_gateway, wait_path},
    topology::Netns,
};

/// Port → what the frame to it is.
const FWD_PROTECTED: u16 = 7001;
const UNPROTECTED: u16 = 7002;
const IN_PROTECTED: u16 = 7003;
const IKE: u16 = 500;

/// An Ethernet frame from the wire router to gw-b carrying UDP `src` → `dst`:`dport`.
fn frame(net: &GatewayNet, src: IpAddr, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let l4 = packet::l4(src, dst, packet::IPPROTO_UDP, 40000, dport, payload);
    let (ethertype, l3) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            packet::ETH_P_IP,
            packet::ipv4(s, d, packet::IPPROTO_UDP, 0, &l4),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => (
            packet::ETH_P_IPV6,
            packet::ipv6(s, d, packet::IPPROTO_UDP, &[], 0, &l4),
        ),
        _ => panic!("mixed families"),
    };
    packet::ethernet(
        net.outside(Side::B).mac,
        net.wire_port(Side::B).mac,
        None,
        ethertype,
        &l3,
    )
}

/// Writes `frames` onto `ifname` in `ns` through a packet socket.
fn inject(ns: &Netns, ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    ns.run(|| {
        let sock = xfrm_tests::sock::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no interface {ifname}");
        for f in frames {
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&f[..6]);
            // SAFETY: a valid buffer and sockaddr of the given lengths.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            ensure!(
                n == f.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })
}

/// A UDP socket on `port` (any address of `family`) in `ns`.
fn listen(ns: &Netns, family: Family, port: u16) -> Result<UdpSocket> {
    ns.run(|| {
        let any: IpAddr = match family {
            Family::V4 => [0u8; 4].into(),
            Family::V6 => [0u16; 8].into(),
        };
        let s = UdpSocket::bind(SocketAddr::new(any, port))
            .with_context(|| format!("bind UDP {port} in {}", ns.name()))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(s)
    })
}

/// The payloads `s` receives within `wait`.
fn received(s: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    let end = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

/// The value of outside counter `name` in the last counter line of a daemon's log.
fn outside_counter(log: &str, name: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("xdp outside:"))?;
    let outside = line.split("xdp outside:").nth(1)?.split(" | ").next()?;
    Some(
        outside
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0),
    )
}

struct Sockets {
    fwd_protected: UdpSocket,
    unprotected: UdpSocket,
    in_protected: UdpSocket,
    ike: UdpSocket,
}

/// Injects the four frames (payload `tag` + what) and returns what each socket got.
fn round(net: &GatewayNet, f: Family, socks: &Sockets, tag: &str) -> Result<[usize; 4]> {
    let host_a = f.addr(net.host_port(Side::A));
    let wire = f.addr(net.wire_port(Side::B));
    let host_b = f.addr(net.host_port(Side::B));
    let gw_b = f.addr(net.inside(Side::B));
    let frames = [
        (host_a, host_b, FWD_PROTECTED),
        (wire, host_b, UNPROTECTED),
        (host_a, gw_b, IN_PROTECTED),
        (host_a, gw_b, IKE),
    ]
    .map(|(s, d, port)| frame(net, s, d, port, format!("{tag} {port}").as_bytes()));
    inject(
        net.topo.ns(net.wire),
        &net.wire_port(Side::B).ifname,
        &frames,
    )?;
    let mut counts = [0usize; 4];
    for (i, (s, port)) in [
        (&socks.fwd_protected, FWD_PROTECTED),
        (&socks.unprotected, UNPROTECTED),
        (&socks.in_protected, IN_PROTECTED),
        (&socks.ike, IKE),
    ]
    .into_iter()
    .enumerate()
    {
        let want = format!("{tag} {port}");
        counts[i] = received(s, Duration::from_millis(700))
            .iter()
            .filter(|p| p.as_slice() == want.as_bytes())
            .count();
    }
    Ok(counts)
}

fn run(f: Family) -> Result<()> {
    let case = Case::new(
        &format!("inpolicy-{f:?}").to_lowercase(),
        Endpoints::Hosts,
        f,
        f,
    )
    .sa(SaSpec::new(Mode::Tunnel, GCM128));
    let net = GatewayNet::new(NetOpts::default())?;
    let socks = Sockets {
        fwd_protected: listen(net.topo.ns(net.host_b), f, FWD_PROTECTED)?,
        unprotected: listen(net.topo.ns(net.host_b), f, UNPROTECTED)?,
        in_protected: listen(net.topo.ns(net.gw_b), f, IN_PROTECTED)?,
        ike: listen(net.topo.ns(net.gw_b), f, IKE)?,
    };
    // Neighbours resolved before the one-shot frames: a first IPv6 neighbour solicitation can
    // take a second, longer than the wait for a frame.
    let warm = Instant::now() + Duration::from_secs(10);
    xfrm_tests::traffic::wait_ping(net.topo.ns(net.wire), f.addr(net.outside(Side::B)), warm)?;
    xfrm_tests::traffic::wait_ping(net.topo.ns(net.gw_b), f.addr(net.host_port(Side::B)), warm)?;

    // Phase 1, the control: no daemon, gw-b routes whatever comes.
    let plain = round(&net, f, &socks, "control")?;
    ensure!(
        plain == [1, 1, 1, 1],
        "without the gateways every injected frame should arrive (fwd, clear, in, IKE): \
         {plain:?}"
    );

    // Phase 2: both gateways up and the tunnel carrying traffic.
    let mut a = start_gateway(&net, &case, Side::A)?;
    let mut b = start_gateway(&net, &case, Side::B)?;
    let r = (|| -> Result<()> {
        for (d, s) in [(&mut a, Side::A), (&mut b, Side::B)] {
            d.wait_attached(
                net.topo.ns(net.gw(s)),
                &[&net.outside(s).ifname],
                Duration::from_secs(30),
            )?;
        }
        wait_path(&net, &case, &mut || {
            a.check_alive()?;
            b.check_alive()
        })?;
        let got = round(&net, f, &socks, "gateway")?;
        ensure!(
            got == [0, 1, 0, 1],
            "with the gateways: fwd-protected, clear, in-protected, IKE frames received \
             {got:?}, expected [0, 1, 0, 1]"
        );
        // The refusals are counted (the daemon prints its counters every second).
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let n = outside_counter(&b.log(), "drop_in_tmpl_mismatch");
            if n == Some(2) {
                break;
            }
            if Instant::now() > end {
                bail!("gw-b's outside program counted drop_in_tmpl_mismatch={n:?}, expected 2");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        a.check_alive()?;
        b.check_alive()
    })();
    if let Err(e) = r {
        bail!("{e:#}\n{}", daemon_logs(&[&a, &b]));
    }
    let line = b
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("xdp outside:"))
        .unwrap_or_default()
        .to_string();
    report(&format!("inbound policy {f:?}: gw-b {line}"));
    for (n, d) in [("A", a), ("B", b)] {
        let st = d.stop();
        ensure!(st.success(), "gateway {n} exited with {st} on SIGINT");
    }
    Ok(())
}

#[test]
fn clear_text_under_in_fwd_policies_never_gets_through() {
    if !root_or_skip("clear_text_under_in_fwd_policies_never_gets_through") {
        return;
    }
    init_logging();
    let _one_at_a_time = heavy();
    for f in [Family::V4, Family::V6] {
        if let Err(e) = run(f) {
            panic!("{f:?}: {e:#}");
        }
    }
}
