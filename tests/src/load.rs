//! Load for rekey tests: numbered UDP datagrams at a fixed rate (each loss is seen by its
//! number) and paced TCP transfers checked whole.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    gateway::{Case, GatewayNet, Side},
    peer::stream_of,
    scenario::transfer_deadline,
    topology::Netns,
    traffic::{expected_sha256, tcp_transfer_paced},
};

/// A receiver of numbered datagrams (the number in the first 8 bytes) in `ns`. The socket is
/// bound before this returns, so a sender started next cannot lose its first datagrams to a
/// port that is not open yet.
pub fn receiver(
    ns: &Netns,
    port: u16,
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<HashSet<u64>>>,
) -> std::thread::JoinHandle<Result<()>> {
    let bound = ns.run(|| {
        let s = UdpSocket::bind(SocketAddr::new(IpAddr::from([0u8; 16]), port))
            .or_else(|_| UdpSocket::bind(SocketAddr::new(IpAddr::from([0u8; 4]), port)))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(s)
    });
    std::thread::spawn(move || {
        let s = bound.with_context(|| format!("bind UDP port {port}"))?;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            match s.recv(&mut buf) {
                Ok(n) if n >= 8 => {
                    let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                    got.lock().unwrap_or_else(|p| p.into_inner()).insert(seq);
                }
                _ => {}
            }
        }
        Ok(())
    })
}

/// Numbered datagrams (300 bytes) from `ns` to `to` every `interval` until `stop`; `sent`
/// counts them.
pub fn sender(
    ns: &Netns,
    to: SocketAddr,
    interval: Duration,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Result<()>> {
    ns.thread(move || {
        let any: IpAddr = match to {
            SocketAddr::V4(_) => [0u8; 4].into(),
            SocketAddr::V6(_) => [0u8; 16].into(),
        };
        let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
        let mut buf = [0u8; 300];
        let start = Instant::now();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            buf[..8].copy_from_slice(&n.to_be_bytes());
            s.send_to(&buf, to)
                .with_context(|| format!("datagram {n}"))?;
            n += 1;
            sent.store(n, Ordering::Relaxed);
            // A fixed rate: the n-th datagram leaves at n intervals from the start.
            let next = start + interval * n as u32;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        Ok(())
    })
}

/// One transfer of `size` bytes each way at once, paced to `pacing` (tcp_transfer_paced), each checked whole (SHA-256 at both ends).
pub fn paced_transfers(
    net: &GatewayNet,
    case: &Case,
    port: u16,
    size: u64,
    pacing: u64,
) -> Result<()> {
    let deadline = transfer_deadline(2 * size);
    let one = |s: Side| -> Result<()> {
        let r = tcp_transfer_paced(
            net.topo.ns(case.traffic_ns(net, s)),
            net.topo.ns(case.traffic_ns(net, s.other())),
            case.traffic_addr(net, s.other()),
            port + if s == Side::A { 0 } else { 1 },
            stream_of(s),
            size,
            deadline,
            Default::default(),
            Some(pacing),
        )
        .with_context(|| format!("transfer from {s:?}"))?;
        if r.sent != r.received
            || r.received.bytes != size
            || r.received.sha256 != expected_sha256(stream_of(s), size)
        {
            bail!("transfer from {s:?} not intact: {r}");
        }
        Ok(())
    };
    std::thread::scope(|sc| {
        let b = sc.spawn(|| one(Side::B));
        let a = one(Side::A);
        a.and(b.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}
