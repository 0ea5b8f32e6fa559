//! The AF_XDP building blocks both socket users share (the gateway's workers in worker.rs
//! and the single test/diagnostic socket in xsk.rs): the UMEM area, one socket bound to an
//! interface queue with its four rings, and the classifier's metadata in front of a frame.

use std::{ffi::CString, num::NonZeroU32, ptr::NonNull};

use anyhow::{anyhow, bail, Result};
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};
use xfrm_common::{XdpMeta, XDP_META_LEN, XDP_META_MAGIC};

/// UMEM frame size: one page, room for 256 bytes of headroom, a 1500-byte packet and any
/// trailer (and native XDP's limits on veth).
pub const FRAME_SIZE: u32 = 4096;

/// The UMEM area: anonymous, page-aligned, unmapped on drop (after the sockets: owners keep
/// it as their last field).
pub struct Area {
    pub ptr: NonNull<u8>,
    pub len: usize,
}

impl Area {
    pub fn new(len: usize) -> Result<Self> {
        // SAFETY: a fresh private anonymous mapping; checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
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

/// An area of `frames` frames registered as a UMEM with fill/completion rings of
/// `ring_size`. The area must outlive the UMEM (keep it after it, in drop order).
pub fn new_umem(frames: u32, ring_size: u32) -> Result<(Area, Umem)> {
    let area = Area::new(frames as usize * FRAME_SIZE as usize)?;
    let cfg = UmemConfig {
        fill_size: ring_size,
        complete_size: ring_size,
        frame_size: FRAME_SIZE,
        headroom: 0,
        flags: 0,
    };
    let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
    // SAFETY: page-aligned mapping of the right size, which the caller keeps alive longer.
    let umem = unsafe { Umem::new(cfg, slice) }.map_err(|e| anyhow!("UMEM registration: {e:?}"))?;
    Ok((area, umem))
}

/// One AF_XDP socket bound to an interface queue: its RX/TX rings and its own
/// fill/completion pair on the shared UMEM. Field order is drop order.
pub struct QueueSocket {
    pub rx: RingRx,
    pub tx: RingTx,
    pub device: DeviceQueue,
    _user: User,
    _sock: Socket,
}

impl QueueSocket {
    /// Binds to `ifname` queue `queue` (calling thread's namespace). The first socket of a
    /// UMEM (`first`) uses the UMEM's own fd and asks for need_wakeup; the others share the
    /// UMEM and inherit it (a socket sharing the UMEM may not pass flags: xsk_bind EINVAL).
    pub fn bind(
        umem: &Umem,
        ifname: &str,
        queue: u32,
        ring_size: u32,
        first: bool,
    ) -> Result<Self> {
        let mut info = IfInfo::invalid();
        let name = CString::new(ifname)?;
        info.from_name(&name)
            .map_err(|e| anyhow!("interface {ifname}: {e:?}"))?;
        info.set_queue(queue);
        let sock = if first {
            Socket::with_shared(&info, umem)
        } else {
            Socket::new(&info)
        }
        .map_err(|e| anyhow!("AF_XDP socket on {ifname}: {e:?}"))?;
        let device = umem
            .fq_cq(&sock)
            .map_err(|e| anyhow!("fill/completion rings on {ifname}: {e:?}"))?;
        let ring = NonZeroU32::new(ring_size);
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: ring,
                    tx_size: ring,
                    bind_flags: if first {
                        SocketConfig::XDP_BIND_NEED_WAKEUP
                    } else {
                        0
                    },
                },
            )
            .map_err(|e| anyhow!("rx/tx rings on {ifname}: {e:?}"))?;
        let rx = user.map_rx().map_err(|e| anyhow!("map rx ring: {e:?}"))?;
        let tx = user.map_tx().map_err(|e| anyhow!("map tx ring: {e:?}"))?;
        umem.bind(&user)
            .map_err(|e| anyhow!("bind AF_XDP socket to {ifname} queue {queue}: {e:?}"))?;
        Ok(Self {
            rx,
            tx,
            device,
            _user: user,
            _sock: sock,
        })
    }
}

/// The [`XdpMeta`] that ends at `head` in a frame, if it carries the magic.
pub fn read_meta(buf: &[u8], head: usize) -> Option<XdpMeta> {
    let m = buf.get(head.checked_sub(XDP_META_LEN)?..head)?;
    // SAFETY: XDP_META_LEN bytes of plain integers.
    let m: XdpMeta = unsafe { std::ptr::read_unaligned(m.as_ptr() as *const XdpMeta) };
    (m.magic == XDP_META_MAGIC).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xfrm_common::META_F_INBOUND;

    #[test]
    fn metadata_ends_where_the_packet_starts() {
        let mut buf = vec![0u8; 4096];
        let m = XdpMeta {
            magic: XDP_META_MAGIC,
            flags: META_F_INBOUND,
            l3_offset: 14,
            l4_offset: 34,
            policy_id: 7,
            sa_id: 9,
        };
        // SAFETY: XDP_META_LEN bytes of plain integers into a large enough buffer.
        unsafe {
            std::ptr::write_unaligned(buf[256 - XDP_META_LEN..].as_mut_ptr() as *mut XdpMeta, m)
        };
        assert_eq!(read_meta(&buf, 256), Some(m));
        assert_eq!(read_meta(&buf, 255), None, "not where the magic is");
        assert_eq!(read_meta(&buf, 4), None, "no room for metadata");
        assert_eq!(read_meta(&buf, 5000), None, "outside the frame");
    }
}
