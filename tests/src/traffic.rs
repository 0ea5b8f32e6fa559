//! Traffic for the gateway tests: TCP transfers whose both ends hash what they sent and
//! received (SHA-256), pings, and the payload pattern that makes plaintext recognisable.
//!
//! # The pattern
//! A stream is a sequence of 64-byte blocks: [`MAGIC`] (7 bytes), the stream id (1 byte),
//! the block number (8 bytes, big endian), 48 bytes from a PRNG keyed by both. Any piece of
//! plaintext of 71 bytes or more holds a whole `MAGIC`, so a capture finds plaintext by
//! searching for it; a decrypted packet's payload is checked block by block against the
//! stream it claims to belong to ([`check_payload`]).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::gateway::splitmix64;
use crate::topology::Netns;

/// Starts every 64-byte block of plaintext the tests send.
pub const MAGIC: [u8; 7] = *b"XfRmPlT";
pub const BLOCK: usize = 64;

/// Block `index` of stream `stream`.
pub fn block(stream: u8, index: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..7].copy_from_slice(&MAGIC);
    b[7] = stream;
    b[8..16].copy_from_slice(&index.to_be_bytes());
    let mut s = splitmix64(index ^ (u64::from(stream) << 56));
    for c in b[16..].chunks_mut(8) {
        s = splitmix64(s);
        c.copy_from_slice(&s.to_le_bytes());
    }
    b
}

/// Bytes `offset..offset + buf.len()` of stream `stream`.
pub fn fill(stream: u8, offset: u64, buf: &mut [u8]) {
    let mut pos = 0;
    let mut off = offset;
    while pos < buf.len() {
        let b = block(stream, off / BLOCK as u64);
        let at = (off % BLOCK as u64) as usize;
        let n = (BLOCK - at).min(buf.len() - pos);
        buf[pos..pos + n].copy_from_slice(&b[at..at + n]);
        pos += n;
        off += n as u64;
    }
}

/// What [`check_payload`] found in a piece of plaintext.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PayloadCheck {
    /// Whole blocks equal to the stream's block of that number.
    pub good: usize,
    /// Whole blocks that start with MAGIC but differ from the stream.
    pub bad: usize,
    /// Streams seen.
    pub streams: Vec<u8>,
}

/// Every whole block (found by its MAGIC) in `payload`, compared with the stream.
pub fn check_payload(payload: &[u8]) -> PayloadCheck {
    let mut c = PayloadCheck::default();
    let finder = memchr::memmem::Finder::new(&MAGIC[..]);
    let mut from = 0;
    while let Some(i) = finder.find(&payload[from..]) {
        let at = from + i;
        if at + BLOCK > payload.len() {
            break;
        }
        let stream = payload[at + 7];
        let index = u64::from_be_bytes(payload[at + 8..at + 16].try_into().unwrap());
        if payload[at..at + BLOCK] == block(stream, index) {
            c.good += 1;
            if !c.streams.contains(&stream) {
                c.streams.push(stream);
            }
            from = at + BLOCK;
        } else {
            c.bad += 1;
            from = at + 1;
        }
    }
    c
}

/// The result of one end of a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

#[derive(Clone, Debug)]
pub struct TransferReport {
    pub sent: End,
    pub received: End,
    pub elapsed: Duration,
}

impl TransferReport {
    pub fn mib_per_s(&self) -> f64 {
        self.received.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64()
    }
}

fn hex32(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Display for TransferReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes sent (sha256 {}), {} received (sha256 {}) in {:.1?} ({:.1} MiB/s)",
            self.sent.bytes,
            hex32(&self.sent.sha256),
            self.received.bytes,
            hex32(&self.received.sha256),
            self.elapsed,
            self.mib_per_s()
        )
    }
}

/// A TCP transfer of `size` bytes of stream `stream` from namespace `from` to `to` at
/// `dst`:`port`. Both ends hash; returns when the receiver has seen EOF, or fails when
/// `deadline` passes first (a stalled transfer is a failure, not a hang).
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    dst: IpAddr,
    port: u16,
    stream: u8,
    size: u64,
    deadline: Instant,
) -> Result<TransferReport> {
    tcp_transfer_progress(
        from,
        to,
        dst,
        port,
        stream,
        size,
        deadline,
        Default::default(),
    )
}

/// [`tcp_transfer`], with the bytes received so far in `progress`.
#[allow(clippy::too_many_arguments)]
pub fn tcp_transfer_progress(
    from: &Netns,
    to: &Netns,
    dst: IpAddr,
    port: u16,
    stream: u8,
    size: u64,
    deadline: Instant,
    progress: Arc<AtomicU64>,
) -> Result<TransferReport> {
    tcp_transfer_paced(from, to, dst, port, stream, size, deadline, progress, None)
}

/// [`tcp_transfer_progress`], the sender paced at `pacing` bytes per second
/// (SO_MAX_PACING_RATE) when given: load that leaves the gateways room, for tests that
/// must tell a loss caused by what they test from one caused by saturation.
#[allow(clippy::too_many_arguments)]
pub fn tcp_transfer_paced(
    from: &Netns,
    to: &Netns,
    dst: IpAddr,
    port: u16,
    stream: u8,
    size: u64,
    deadline: Instant,
    progress: Arc<AtomicU64>,
    pacing: Option<u64>,
) -> Result<TransferReport> {
    let bind = SocketAddr::new(
        match dst {
            IpAddr::V4(_) => IpAddr::from([0u8; 4]),
            IpAddr::V6(_) => IpAddr::from([0u8; 16]),
        },
        port,
    );
    let listener = to.run(|| Ok(TcpListener::bind(bind)?))?;
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    let receiver = std::thread::spawn(move || receive(listener, deadline, &progress));
    let conn = from.run(|| connect(SocketAddr::new(dst, port), deadline));
    let conn = conn.and_then(|c| {
        if let Some(rate) = pacing {
            crate::sock::setsockopt_int(
                &c,
                libc::SOL_SOCKET,
                libc::SO_MAX_PACING_RATE,
                rate.min(i32::MAX as u64) as i32,
            )?;
        }
        Ok(c)
    });
    let sent = conn.and_then(|s| send(s, stream, size, deadline));
    let received = receiver
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    let (sent, received) = match (sent, received) {
        (Ok(s), Ok(r)) => (s, r),
        (s, r) => bail!(
            "transfer of {size} bytes to {dst} port {port}: sender {}, receiver {}",
            s.map(|e| format!("done ({} bytes)", e.bytes))
                .unwrap_or_else(|e| format!("{e:#}")),
            r.map(|e| format!("done ({} bytes)", e.bytes))
                .unwrap_or_else(|e| format!("{e:#}"))
        ),
    };
    Ok(TransferReport {
        sent,
        received,
        elapsed: start.elapsed(),
    })
}

fn connect(to: SocketAddr, deadline: Instant) -> Result<TcpStream> {
    // The SYN may be lost while a gateway's neighbour entries resolve: retry until the
    // deadline.
    let mut last = None;
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
            Ok(s) => return Ok(s),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    Err(anyhow!("connect to {to}: {last:?} until the deadline"))
}

fn send(mut s: TcpStream, stream: u8, size: u64, deadline: Instant) -> Result<End> {
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        fill(stream, off, &mut buf[..n]);
        let mut done = 0;
        while done < n {
            if Instant::now() > deadline {
                bail!("send stalled: {off} + {done} of {size} bytes at the deadline");
            }
            match s.write(&buf[done..n]) {
                Ok(0) => bail!("send: connection closed at {} bytes", off + done as u64),
                Ok(k) => done += k,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e).context(format!("send at {} bytes", off + done as u64)),
            }
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the receiver's close, so that "sent" means delivered up to our FIN.
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut b = [0u8; 16];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    Ok(End {
        bytes: off,
        sha256: h.finalize().into(),
    })
}

fn receive(listener: TcpListener, deadline: Instant, progress: &AtomicU64) -> Result<End> {
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("accept: no connection before the deadline");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        if Instant::now() > deadline {
            bail!("receive stalled: {total} bytes at the deadline");
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
                progress.store(total, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context(format!("receive after {total} bytes")),
        }
    }
    drop(s);
    Ok(End {
        bytes: total,
        sha256: h.finalize().into(),
    })
}

/// The SHA-256 of `size` bytes of stream `stream` (what an intact transfer delivers).
pub fn expected_sha256(stream: u8, size: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        fill(stream, off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.finalize().into()
}

/// The 16-byte `ping -p` pattern: MAGIC, then "ping" and the stream id, so that echo
/// requests and replies in clear are found by the capture like the transfers.
pub fn ping_pattern(stream: u8) -> String {
    let mut p = MAGIC.to_vec();
    p.push(stream);
    p.extend_from_slice(b"ping0000");
    p.iter().map(|b| format!("{b:02x}")).collect()
}

/// `count` pings from `ns` to `dst` carrying the marker pattern; Ok(transmitted/received line)
/// when every one was answered.
pub fn ping(ns: &Netns, dst: IpAddr, count: u32, stream: u8) -> Result<String> {
    let out = ns
        .command("ping")
        .args([
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            "-s",
            "200",
            "-p",
            &ping_pattern(stream),
            &dst.to_string(),
        ])
        .output()
        .context("ping (iputils-ping; `cargo xtask setup` installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or("")
        .to_string();
    if !out.status.success() || !line.contains(&format!("{count} received")) {
        bail!("ping {dst} from {}: {}", ns.name(), text.trim());
    }
    Ok(line)
}

/// Ping until one answer comes back or `deadline` passes (a gateway starting up).
pub fn wait_ping(ns: &Netns, dst: IpAddr, deadline: Instant) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let ok = ns
            .command("ping")
            .args(["-c", "1", "-W", "1", &dst.to_string()])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            bail!(
                "no answer from {dst} (ping from {}) before the deadline",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// UDP datagrams of stream `stream` (1024 bytes of it each, in order) from `from` to `to`
/// every `interval` until `stop`; returns how many were sent. For traffic that keeps coming
/// while a gateway is down.
pub fn udp_stream(
    from: &Netns,
    to: SocketAddr,
    stream: u8,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<u64>> {
    from.thread(move || {
        let any: IpAddr = match to {
            SocketAddr::V4(_) => [0u8; 4].into(),
            SocketAddr::V6(_) => [0u8; 16].into(),
        };
        let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
        let mut buf = [0u8; 1024];
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            fill(stream, n * buf.len() as u64, &mut buf);
            // Errors (ICMP unreachable reported on the socket) are expected while the path
            // is down.
            if s.send_to(&buf, to).is_ok() {
                n += 1;
            }
            std::thread::sleep(interval);
        }
        Ok(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_pieces_check() {
        let mut buf = vec![0u8; 1000];
        fill(b'a', 12345, &mut buf);
        let c = check_payload(&buf);
        // 1000 bytes from an unaligned offset: at least 14 whole blocks.
        assert!(c.good >= 14, "{c:?}");
        assert_eq!((c.bad, c.streams.clone()), (0, vec![b'a']));
        // One flipped byte inside a block: that block is bad.
        let at = buf
            .windows(7)
            .position(|w| w == MAGIC)
            .expect("a block start");
        buf[at + 20] ^= 1;
        let c2 = check_payload(&buf);
        assert_eq!((c2.good + 1, c2.bad), (c.good, 1));
        // Consecutive fills are one stream.
        let mut a = vec![0u8; 300];
        let mut b = vec![0u8; 300];
        fill(b'b', 0, &mut a);
        fill(b'b', 300, &mut b);
        let mut whole = vec![0u8; 600];
        fill(b'b', 0, &mut whole);
        assert_eq!([a, b].concat(), whole);
    }

    #[test]
    fn ping_pattern_is_16_bytes_with_magic() {
        let p = ping_pattern(b'a');
        assert_eq!(p.len(), 32);
        assert!(p.starts_with("5866526d506c54"));
    }
}
