//! A leak probe for the fail-closed tests: a UDP flow that a policy protects, and at its
//! destination a socket for the datagrams in clear beside a raw socket for ESP (the
//! destination has no IPsec), so one probe tells "in clear", "protected" and "dropped" apart.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{sock::esp_socket, topology::Netns};

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
}

/// One ping from `ns` to `dst` answered within a second.
pub fn ping_once(ns: &Netns, dst: &str) -> bool {
    ns.exec("ping", &["-c", "1", "-W", "1", dst]).is_ok()
}
