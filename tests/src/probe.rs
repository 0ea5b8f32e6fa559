//! A leak probe for the fail-closed tests: a UDP flow that a policy protects, and at its
//! destination a socket for the datagrams in clear beside a raw socket for ESP (the
//! destination has no IPsec), so one probe tells "in clear", "protected" and "dropped" apart.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    sock::esp_socket,
    topology::{Link, Netns, Proc, Topology, VethOpts},
};

/// What the destination sees: the flow's UDP in clear, and ESP.
pub struct Receiver {
    clear: UdpSocket,
    esp: OwnedFd,
    v4: bool,
    /// Sequence numbers of the ESP packets received, in order.
    seqs: std::cell::RefCell<Vec<u32>>,
}

impl Receiver {
    /// Bound to `to` (the flow's destination) in the calling thread's namespace.
    pub fn bind(to: SocketAddr) -> Result<Self> {
        let clear = UdpSocket::bind(to)?;
        clear.set_read_timeout(Some(Duration::from_millis(20)))?;
        let family = if to.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let esp = esp_socket(family == libc::AF_INET6, libc::SOCK_NONBLOCK)?;
        Ok(Self {
            clear,
            esp,
            v4: to.is_ipv4(),
            seqs: Default::default(),
        })
    }

    /// Sends `n` datagrams "secret <i>" from `sender` to `to`, 20 ms apart, and counts what
    /// arrives within 300 ms after: (in clear, as ESP). A send error (the sender's stack
    /// refusing it) is a datagram not sent.
    pub fn probe(&self, sender: &UdpSocket, to: SocketAddr, n: usize) -> (usize, usize) {
        let mut buf = [0u8; 4096];
        let (mut clear, mut esp) = (0, 0);
        for i in 0..n {
            let _ = sender.send_to(format!("secret {i}").as_bytes(), to);
            std::thread::sleep(Duration::from_millis(20));
        }
        let end = Instant::now() + Duration::from_millis(300);
        while Instant::now() < end {
            if let Ok(k) = self.clear.recv(&mut buf) {
                assert!(buf[..k].starts_with(b"secret "), "not our datagram");
                clear += 1;
            }
            // SAFETY: valid fd; writes at most buf.len() bytes.
            let k = unsafe {
                libc::recv(
                    self.esp.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if k > 0 {
                esp += 1;
                // A raw IPv4 socket gives the IP header, an IPv6 one the ESP header.
                let at = if self.v4 {
                    usize::from(buf[0] & 0x0f) * 4
                } else {
                    0
                };
                if let Some(s) = buf.get(at + 4..at + 8).filter(|_| k as usize >= at + 8) {
                    let seq = u32::from_be_bytes(s.try_into().expect("4 bytes"));
                    self.seqs.borrow_mut().push(seq);
                }
            }
        }
        (clear, esp)
    }
}

impl Receiver {
    /// The ESP sequence numbers received since the last call, in arrival order.
    pub fn take_seqs(&self) -> Vec<u32> {
        std::mem::take(&mut *self.seqs.borrow_mut())
    }

    /// Until ESP arrives, at most `within` (before the daemon's programs are attached, the
    /// datagrams cross in clear as with no daemon: the callers check afterwards). Fails at
    /// once, with its log, if the daemon `d` exits.
    pub fn wait_protected(
        &self,
        sender: &UdpSocket,
        to: SocketAddr,
        d: &mut Proc,
        within: Duration,
    ) {
        let end = Instant::now() + within;
        while Instant::now() < end {
            let (_, esp) = self.probe(sender, to, 3);
            if esp > 0 {
                return;
            }
            if let Some(st) = d.try_wait() {
                panic!("xfrm-user run exited: {st}; log:\n{}", d.log());
            }
        }
        panic!(
            "no ESP at the receiver within {within:?}; log:\n{}",
            d.log()
        );
    }
}

/// The fail-closed tests' line: `h1 ──veth 1── gw (ip_forward=1) ──veth 2── h2`, h1 routing
/// 10.2.0.0/24 and h2 10.1.0.0/24 through gw, a UDP sender in h1 (its address, port 4001)
/// and a [`Receiver`] in h2 (`to`: its address, port 5001).
pub struct Line {
    pub t: Topology,
    pub h1: usize,
    pub gw: usize,
    pub h2: usize,
    pub l1: Link,
    pub l2: Link,
    pub sender: UdpSocket,
    pub rx: Receiver,
    pub to: SocketAddr,
}

impl Line {
    pub fn new() -> Result<Self> {
        let mut t = Topology::new()?;
        let h1 = t.add_netns("h1")?;
        let gw = t.add_netns("gw")?;
        let h2 = t.add_netns("h2")?;
        let l1 = t.add_veth(h1, gw, VethOpts::default())?;
        let l2 = t.add_veth(gw, h2, VethOpts::default())?;
        t.ns(h1)
            .ip(&["route", "add", "10.2.0.0/24", "via", &l1.b.ipv4.to_string()])?;
        t.ns(h2)
            .ip(&["route", "add", "10.1.0.0/24", "via", &l2.a.ipv4.to_string()])?;
        t.ns(gw).exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let to = SocketAddr::new(l2.b.ipv4.into(), 5001);
        let from = SocketAddr::new(l1.a.ipv4.into(), 4001);
        let sender = t.ns(h1).run(|| Ok(UdpSocket::bind(from)?))?;
        let rx = t.ns(h2).run(|| Receiver::bind(to))?;
        Ok(Self {
            t,
            h1,
            gw,
            h2,
            l1,
            l2,
            sender,
            rx,
            to,
        })
    }
}

/// One ping from `ns` to `dst` answered within a second.
pub fn ping_once(ns: &Netns, dst: &str) -> bool {
    ns.exec("ping", &["-c", "1", "-W", "1", dst]).is_ok()
}
