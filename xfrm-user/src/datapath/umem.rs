//! The AF_XDP building blocks both socket users share (the gateway's workers in worker.rs
//! and the single test/diagnostic socket in xsk.rs): the UMEM area, one socket bound to an
//! interface queue with its four rings, and the classifier's header at the start of a frame.

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

/// Can an AF_XDP socket bind to `ifname` queue `queue` in zero-copy (or copy) mode? A
/// small UMEM and a socket that live only for the probe (`xfrm-user doctor`).
pub fn probe_bind(ifname: &str, queue: u32, zero_copy: bool) -> Result<()> {
    let (_area, umem) = new_umem(64, 64)?;
    let mut info = IfInfo::invalid();
    let name = CString::new(ifname)?;
    info.from_name(&name)
        .map_err(|e| anyhow!("interface {ifname}: {e:?}"))?;
    info.set_queue(queue);
    let sock = Socket::with_shared(&info, &umem).map_err(|e| anyhow!("AF_XDP socket: {e:?}"))?;
    let _device = umem
        .fq_cq(&sock)
        .map_err(|e| anyhow!("fill/completion rings: {e:?}"))?;
    let user = umem
        .rx_tx(
            &sock,
            &SocketConfig {
                rx_size: NonZeroU32::new(64),
                tx_size: NonZeroU32::new(64),
                bind_flags: if zero_copy {
                    SocketConfig::XDP_BIND_ZEROCOPY
                } else {
                    SocketConfig::XDP_BIND_COPY
                },
            },
        )
        .map_err(|e| anyhow!("rx/tx rings: {e:?}"))?;
    umem.bind(&user).map_err(|e| anyhow!("bind: {e:?}"))?;
    Ok(())
}

/// A received frame split by the in-frame contract of [`XdpMeta`]: the header the XDP
/// program pushed, and where the packet behind it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub meta: XdpMeta,
    /// Offset of the packet (its Ethernet header) in the frame.
    pub head: usize,
    pub len: usize,
}

/// The frame `buf` holds a descriptor of `len` bytes at `head`: the [`XdpMeta`] header at its
/// start, the packet after it. None (the frame is not one our program redirected, or is cut
/// short) unless the magic is there and the offsets it gives lie inside the packet.
pub fn take_meta(buf: &[u8], head: usize, len: usize) -> Option<Received> {
    let m = buf.get(head..head.checked_add(XDP_META_LEN)?)?;
    // SAFETY: XDP_META_LEN bytes of plain integers, read unaligned.
    let meta: XdpMeta = unsafe { std::ptr::read_unaligned(m.as_ptr() as *const XdpMeta) };
    let len = len.checked_sub(XDP_META_LEN)?;
    let head = head + XDP_META_LEN;
    if meta.magic != XDP_META_MAGIC || buf.len() < head + len || usize::from(meta.l3_offset) > len {
        return None;
    }
    Some(Received { meta, head, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xfrm_common::META_F_INBOUND;

    fn frame_with(m: XdpMeta, at: usize) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        // SAFETY: XDP_META_LEN bytes of plain integers into a large enough buffer.
        unsafe { std::ptr::write_unaligned(buf[at..].as_mut_ptr() as *mut XdpMeta, m) };
        buf
    }

    #[test]
    fn the_header_starts_the_descriptor_and_the_packet_follows() {
        let m = XdpMeta {
            magic: XDP_META_MAGIC,
            flags: META_F_INBOUND,
            l3_offset: 14,
            _pad: 0,
            policy_id: 7,
        };
        let at = 256 - XDP_META_LEN;
        let buf = frame_with(m, at);
        let r = take_meta(&buf, at, XDP_META_LEN + 100).expect("valid header");
        assert_eq!(
            r,
            Received {
                meta: m,
                head: 256,
                len: 100
            }
        );
        assert_eq!(
            take_meta(&buf, at + 1, XDP_META_LEN + 100),
            None,
            "not where the magic is"
        );
        assert_eq!(
            take_meta(&buf, at, XDP_META_LEN - 1),
            None,
            "shorter than the header"
        );
        assert_eq!(
            take_meta(&buf, at, XDP_META_LEN + 13),
            None,
            "l3_offset beyond the packet"
        );
        assert_eq!(take_meta(&buf, 4090, 100), None, "outside the frame");
        assert_eq!(take_meta(&buf, at, 4000), None, "packet beyond the frame");
    }

    #[test]
    fn packet_bytes_are_never_taken_for_a_header() {
        // A frame whose first bytes are not ours (a packet that reached the socket without
        // the header, e.g. a stray frame): dropped, whatever the bytes say otherwise.
        let mut buf = vec![0u8; 4096];
        buf[256..262].copy_from_slice(&[0xff; 6]);
        assert_eq!(take_meta(&buf, 256, 64), None);
    }
}
