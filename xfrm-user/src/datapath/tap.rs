//! The gateway's own traffic. Packets the host itself sends never pass an XDP program, so the
//! TC egress program `xfrm_local_out` on the outside interface hands those an out policy
//! protects to a TAP device the daemon owns; the workers read them from it (one queue each),
//! encrypt them as they do the inside's, and send them out through AF_XDP. Decrypted packets
//! addressed to the host go the other way: written to the TAP, the kernel receives them as
//! from any interface and delivers them to the sockets.
//!
//! The TAP is not persistent: it disappears with the daemon's last fd, and a redirect to a
//! device that is gone drops the packet, so a dead daemon leaves nothing in clear.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context, Result};

use super::sys::socket;
use super::worker::{port_info, PortInfo};

// linux/if_tun.h
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// The default name of the TAP device.
pub const DEFAULT_LOCAL_DEV: &str = "xfrm-local";

/// The TAP device and its queues (one per worker).
pub struct Tap {
    pub info: PortInfo,
    queues: Vec<OwnedFd>,
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqInt {
    name: [libc::c_char; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

fn ifname(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        bail!("local device name `{name}`: expected 1 to 15 characters, no '/' or space");
    }
    let mut n = [0 as libc::c_char; libc::IFNAMSIZ];
    for (d, s) in n.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(n)
}

/// One more queue of the TAP `name` (created by the first).
fn open_queue(name: &str) -> Result<OwnedFd> {
    let path = CString::new("/dev/net/tun")?;
    // SAFETY: a valid path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("open /dev/net/tun");
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReqFlags {
        name: ifname(name)?,
        flags: IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE,
        _pad: [0; 22],
    };
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is laid out as.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("TUNSETIFF {name}"));
    }
    Ok(fd)
}

/// An ioctl on an interface through a throwaway socket (SIOCSIFMTU, SIOCGIFFLAGS...); `T`
/// is one of the ifreq layouts above.
fn if_ioctl<T>(req: libc::c_ulong, ifr: &mut T) -> std::io::Result<()> {
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)?;
    // SAFETY: these requests take a struct ifreq, which `ifr` is laid out as.
    if unsafe { libc::ioctl(s.as_raw_fd(), req, ifr as *mut T) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes a sysctl of the device; a missing file (IPv6 off) is not an error.
fn sysctl(path: &str, value: &str) -> Result<()> {
    match std::fs::write(path, value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("write {value} to {path}")),
    }
}

impl Tap {
    /// Creates the TAP `name` with `queues` queues in the calling thread's network
    /// namespace, MTU `mtu`, up, without addresses. Fails if an interface of that name
    /// exists (two daemons must not share one).
    pub fn create(name: &str, queues: u32, mtu: u32) -> Result<Self> {
        ifname(name)?;
        let cname = CString::new(name)?;
        // SAFETY: a valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } != 0 {
            bail!(
                "local device {name}: an interface of that name exists (another xfrm-user in \
                 this namespace? choose another with --local-dev)"
            );
        }
        let mut fds = Vec::new();
        for _ in 0..queues.max(1) {
            fds.push(open_queue(name)?);
        }
        // No IPv6 link-local (no DAD, no router solicitations of its own on the TAP), no
        // reverse-path check (what we deliver comes from remote addresses routed elsewhere),
        // and our ICMP errors to the host's sockets carry one of its own addresses.
        sysctl(
            &format!("/proc/sys/net/ipv6/conf/{name}/addr_gen_mode"),
            "1",
        )?;
        sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"), "0")?;
        sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/accept_local"), "1")?;
        if std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")
            .is_ok_and(|v| v.trim() == "1")
        {
            log::warn!(
                "net.ipv4.conf.all.rp_filter=1 (strict) drops what {name} delivers to this \
                 host; set it to 0 or 2 (loose)"
            );
        }
        let mut ifr = IfReqInt {
            name: ifname(name)?,
            value: mtu as libc::c_int,
            _pad: [0; 20],
        };
        if_ioctl(libc::SIOCSIFMTU, &mut ifr).with_context(|| format!("{name}: MTU {mtu}"))?;
        let mut flags = IfReqFlags {
            name: ifname(name)?,
            flags: 0,
            _pad: [0; 22],
        };
        if_ioctl(libc::SIOCGIFFLAGS, &mut flags).with_context(|| format!("{name}: flags"))?;
        flags.flags |= (libc::IFF_UP | libc::IFF_NOARP) as libc::c_short;
        if_ioctl(libc::SIOCSIFFLAGS, &mut flags).with_context(|| format!("{name}: up"))?;
        let info = port_info(name)?;
        Ok(Self { info, queues: fds })
    }

    /// The queues, for the workers (queue i to worker i).
    pub fn take_queues(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.queues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_checked_before_any_syscall() {
        assert!(ifname("xfrm-local").is_ok());
        assert!(
            ifname("abcdefghijklmno").is_ok(),
            "15 characters fit IFNAMSIZ"
        );
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", "a\0b"] {
            let e = ifname(bad).unwrap_err().to_string();
            assert!(e.contains("expected 1 to 15 characters"), "{bad:?}: {e}");
        }
        let e = Tap::create("a/b", 1, 1500)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("local device name `a/b`"), "{e}");
    }
}
