//! One AF_XDP socket (xdpilone) on one interface queue, with its own UMEM: the frames below
//! `rx_frames` feed the fill ring, the rest are a free list for transmit. A copying,
//! callback-style socket for the classifier tests (tests/xdp_veth.rs, feature `test-support`);
//! the gateway's workers (worker.rs) use the same building blocks (umem.rs) in place.
//!
//! Frame layout as the kernel fills it (copy mode, what veth gives):
//! `[XDP_PACKET_HEADROOM (256) … XdpMeta | packet … ]` — the descriptor's `addr` is the
//! packet start, the metadata ends there.

use std::{os::fd::RawFd, time::Duration};

use anyhow::{anyhow, bail, Result};
use xdpilone::{xdp::XdpDesc, BufIdx, Umem};
use xfrm_common::XdpMeta;

pub use super::umem::FRAME_SIZE;
use super::umem::{new_umem, take_meta, Area, QueueSocket};

#[derive(Clone, Copy, Debug)]
pub struct XskConfig {
    /// Total UMEM frames; half receive, half transmit.
    pub frames: u32,
    pub ring_size: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        Self {
            frames: 1024,
            ring_size: 512,
        }
    }
}

/// A received frame: its metadata (if the classifier wrote valid metadata) and packet bytes.
pub struct RxFrame<'a> {
    pub meta: Option<XdpMeta>,
    pub packet: &'a [u8],
}

pub struct XskSocket {
    // Field order = drop order: the socket before the UMEM, the UMEM before the area.
    sock: QueueSocket,
    umem: Umem,
    area: Area,
    rx_frames: u32,
    tx_free: Vec<u64>,
    fd: RawFd,
}

// SAFETY: the raw pointers inside point into `area`, owned by the same value.
unsafe impl Send for XskSocket {}

impl XskSocket {
    /// Bind to `ifname` queue `queue` in the calling thread's network namespace.
    pub fn bind(ifname: &str, queue: u32, cfg: XskConfig) -> Result<Self> {
        let (area, umem) = new_umem(cfg.frames, cfg.ring_size)?;
        let sock = QueueSocket::bind(&umem, ifname, queue, cfg.ring_size, true)?;
        let fd = sock.rx.as_raw_fd();
        let rx_frames = (cfg.frames / 2).min(cfg.ring_size);
        let tx_free = (rx_frames..cfg.frames)
            .map(|i| u64::from(i) * u64::from(FRAME_SIZE))
            .collect();
        let mut s = Self {
            sock,
            umem,
            area,
            rx_frames,
            tx_free,
            fd,
        };
        s.refill((0..rx_frames).map(|i| u64::from(i) * u64::from(FRAME_SIZE)));
        Ok(s)
    }

    /// The socket to put in the XskMap.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    fn refill(&mut self, addrs: impl Iterator<Item = u64>) {
        let mut w = self.sock.device.fill(self.rx_frames);
        w.insert(addrs);
        w.commit();
        drop(w);
        if self.sock.device.needs_wakeup() {
            self.sock.device.wake();
        }
    }

    fn bytes(&self, off: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(off).ok()?;
        if off.checked_add(len)? > self.area.len {
            return None;
        }
        // SAFETY: in bounds of the mapping; the kernel does not write a frame we hold.
        Some(unsafe { std::slice::from_raw_parts(self.area.ptr.as_ptr().add(off), len) })
    }

    /// Wait up to `timeout` for frames; call `f` for each, then give the frames back to the
    /// fill ring. Returns how many were received.
    pub fn recv(&mut self, timeout: Duration, mut f: impl FnMut(RxFrame<'_>)) -> Result<usize> {
        if self.sock.rx.available() == 0 {
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe {
                libc::poll(
                    &mut pfd,
                    1,
                    timeout.as_millis().min(i32::MAX as u128) as i32,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                // A signal (Ctrl-C) is not an error: the caller checks its stop flag.
                if e.kind() == std::io::ErrorKind::Interrupted {
                    return Ok(0);
                }
                bail!("poll AF_XDP socket: {e}");
            }
        }
        let mut descs = Vec::new();
        {
            let mut r = self.sock.rx.receive(self.rx_frames);
            while let Some(d) = r.read() {
                descs.push(d);
            }
            r.release();
        }
        let frame_mask = !(u64::from(FRAME_SIZE) - 1);
        for d in &descs {
            let base = d.addr & frame_mask;
            let Some(frame) = self.bytes(base, FRAME_SIZE as usize) else {
                continue;
            };
            let head = (d.addr - base) as usize;
            // Our programs push the header on every redirect; a frame without one is shown
            // whole, as it came.
            let f_ = match take_meta(frame, head, d.len as usize) {
                Some(r) => RxFrame {
                    meta: Some(r.meta),
                    packet: &frame[r.head..r.head + r.len],
                },
                None => match frame.get(head..head + d.len as usize) {
                    Some(packet) => RxFrame { meta: None, packet },
                    None => continue,
                },
            };
            f(f_);
        }
        self.refill(descs.iter().map(|d| d.addr & frame_mask));
        Ok(descs.len())
    }

    /// Copy `packet` into a free frame and put it on the TX ring; reap completions first.
    pub fn send(&mut self, packet: &[u8]) -> Result<()> {
        self.reap();
        if packet.len() > FRAME_SIZE as usize {
            bail!("frame of {} bytes > {FRAME_SIZE}", packet.len());
        }
        let addr = self
            .tx_free
            .pop()
            .ok_or_else(|| anyhow!("no free TX frame (completions not reaped?)"))?;
        let frame = self
            .umem
            .frame(BufIdx((addr / u64::from(FRAME_SIZE)) as u32))
            .ok_or_else(|| anyhow!("frame {addr} outside the UMEM"))?;
        // SAFETY: a frame from our free list: neither the kernel nor a reader holds it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                packet.as_ptr(),
                frame.addr.as_ptr().cast::<u8>(),
                packet.len(),
            )
        };
        let desc = XdpDesc {
            addr,
            len: packet.len() as u32,
            options: 0,
        };
        let mut w = self.sock.tx.transmit(1);
        let n = w.insert(std::iter::once(desc));
        w.commit();
        drop(w);
        if n == 0 {
            self.tx_free.push(addr);
            bail!("TX ring full");
        }
        // Copy mode transmits only on a syscall: always kick when the kernel asks.
        if self.sock.tx.needs_wakeup() {
            self.sock.tx.wake();
        }
        Ok(())
    }

    /// Return completed TX frames to the free list.
    pub fn reap(&mut self) {
        let mut c = self.sock.device.complete(self.umem.len_frames());
        while let Some(addr) = c.read() {
            self.tx_free.push(addr);
        }
        c.release();
    }

    /// Frames sent but not completed yet.
    pub fn tx_outstanding(&self) -> usize {
        (self.umem.len_frames() - self.rx_frames) as usize - self.tx_free.len()
    }
}
