//! One AF_XDP socket (xdpilone) on one interface queue, with its own UMEM: the frames below
//! `rx_frames` feed the fill ring, the rest are a free list for transmit. The piece the workers
//! of issue 5 grow from; today the integration tests and `xfrm-user attach --xsk` use it.
//!
//! Frame layout as the kernel fills it (copy mode, what veth gives):
//! `[XDP_PACKET_HEADROOM (256) … XdpMeta | packet … ]` — the descriptor's `addr` is the
//! packet start, the metadata ends there.

use std::{ffi::CString, num::NonZeroU32, os::fd::RawFd, ptr::NonNull, time::Duration};

use anyhow::{anyhow, bail, Result};
use xdpilone::{
    xdp::XdpDesc, BufIdx, DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem,
    UmemConfig, User,
};
use xfrm_common::{XdpMeta, XDP_META_LEN, XDP_META_MAGIC};

pub const FRAME_SIZE: u32 = 4096;

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

/// The UMEM area: anonymous, page-aligned, unmapped on drop (after the socket is gone).
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> Result<Self> {
        // SAFETY: a fresh private anonymous mapping; checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap UMEM: {}", std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(p.cast()).ok_or_else(|| anyhow!("mmap returned null"))?,
            len,
        })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in new().
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A received frame: its metadata (if the classifier wrote valid metadata) and packet bytes.
pub struct RxFrame<'a> {
    pub meta: Option<XdpMeta>,
    pub packet: &'a [u8],
}

pub struct XskSocket {
    // Field order = drop order: rings and sockets before the UMEM, the UMEM before the area.
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    _user: User,
    _sock: Socket,
    umem: Umem,
    area: Area,
    rx_frames: u32,
    tx_free: Vec<u64>,
    fd: RawFd,
}

// The raw pointers inside point into `area`, owned by the same value.
unsafe impl Send for XskSocket {}

impl XskSocket {
    /// Bind to `ifname` queue `queue` in the calling thread's network namespace.
    pub fn bind(ifname: &str, queue: u32, cfg: XskConfig) -> Result<Self> {
        let area = Area::new(cfg.frames as usize * FRAME_SIZE as usize)?;
        let umem_cfg = UmemConfig {
            fill_size: cfg.ring_size,
            complete_size: cfg.ring_size,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: page-aligned mapping of the right size that outlives the Umem (field order).
        let umem = unsafe { Umem::new(umem_cfg, slice) }
            .map_err(|e| anyhow!("UMEM registration: {e:?}"))?;
        let mut info = IfInfo::invalid();
        let name = CString::new(ifname)?;
        info.from_name(&name)
            .map_err(|e| anyhow!("interface {ifname}: {e:?}"))?;
        info.set_queue(queue);
        let sock =
            Socket::with_shared(&info, &umem).map_err(|e| anyhow!("AF_XDP socket: {e:?}"))?;
        let device = umem
            .fq_cq(&sock)
            .map_err(|e| anyhow!("fill/completion rings: {e:?}"))?;
        let ring = NonZeroU32::new(cfg.ring_size);
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: ring,
                    tx_size: ring,
                    bind_flags: SocketConfig::XDP_BIND_NEED_WAKEUP,
                },
            )
            .map_err(|e| anyhow!("rx/tx rings: {e:?}"))?;
        let rx = user.map_rx().map_err(|e| anyhow!("map rx ring: {e:?}"))?;
        let tx = user.map_tx().map_err(|e| anyhow!("map tx ring: {e:?}"))?;
        umem.bind(&user)
            .map_err(|e| anyhow!("bind AF_XDP socket to {ifname} queue {queue}: {e:?}"))?;
        let fd = rx.as_raw_fd();
        let rx_frames = (cfg.frames / 2).min(cfg.ring_size);
        let tx_free = (rx_frames..cfg.frames)
            .map(|i| u64::from(i) * u64::from(FRAME_SIZE))
            .collect();
        let mut s = Self {
            rx,
            tx,
            device,
            _user: user,
            _sock: sock,
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
        let mut w = self.device.fill(self.rx_frames);
        w.insert(addrs);
        w.commit();
        drop(w);
        if self.device.needs_wakeup() {
            self.device.wake();
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
        if self.rx.available() == 0 {
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
            let mut r = self.rx.receive(self.rx_frames);
            while let Some(d) = r.read() {
                descs.push(d);
            }
            r.release();
        }
        for d in &descs {
            let Some(packet) = self.bytes(d.addr, d.len as usize) else {
                continue;
            };
            let meta = self.meta_before(d.addr);
            f(RxFrame { meta, packet });
        }
        let frame_mask = !(u64::from(FRAME_SIZE) - 1);
        self.refill(descs.iter().map(|d| d.addr & frame_mask));
        Ok(descs.len())
    }

    /// The XdpMeta that ends at `addr`, if it is there and carries the magic.
    fn meta_before(&self, addr: u64) -> Option<XdpMeta> {
        let frame_start = addr & !(u64::from(FRAME_SIZE) - 1);
        if addr < frame_start + XDP_META_LEN as u64 {
            return None;
        }
        let b = self.bytes(addr - XDP_META_LEN as u64, XDP_META_LEN)?;
        // SAFETY: XDP_META_LEN bytes of plain integers.
        let m: XdpMeta = unsafe { std::ptr::read_unaligned(b.as_ptr() as *const XdpMeta) };
        (m.magic == XDP_META_MAGIC).then_some(m)
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
        let mut w = self.tx.transmit(1);
        let n = w.insert(std::iter::once(desc));
        w.commit();
        drop(w);
        if n == 0 {
            self.tx_free.push(addr);
            bail!("TX ring full");
        }
        // Copy mode transmits only on a syscall: always kick when the kernel asks.
        if self.tx.needs_wakeup() {
            self.tx.wake();
        }
        Ok(())
    }

    /// Return completed TX frames to the free list.
    pub fn reap(&mut self) {
        let mut c = self.device.complete(self.umem.len_frames());
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
