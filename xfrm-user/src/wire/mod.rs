//! Typed views over header bytes (the smoltcp `wire` pattern): `new_unchecked` wraps a buffer,
//! `check_len` proves every getter in range, `new_checked` does both. Getters and setters
//! never allocate; after `new_checked` they never panic.

/// A view over a header of fixed length `$len`: the struct, `new_unchecked`, and
/// `new_checked`/`check_len`, which ask for `$len` bytes.
macro_rules! fixed_header_view {
    ($(#[$m:meta])* $name:ident, $len:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            pub const fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }
            pub fn new_checked(buffer: T) -> $crate::wire::Result<Self> {
                let p = Self::new_unchecked(buffer);
                p.check_len()?;
                Ok(p)
            }
            pub fn check_len(&self) -> $crate::wire::Result<()> {
                if self.buffer.as_ref().len() < $len {
                    Err($crate::wire::WireError::Truncated)
                } else {
                    Ok(())
                }
            }
        }
    };
}

pub mod ah;
pub mod checksum;
pub mod esp;
pub mod ethernet;
pub mod flow;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

pub use ah::AhPacket;
pub use esp::EspPacket;
pub use ethernet::EthernetFrame;
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

use thiserror::Error;

/// IP protocol numbers used on this path (IANA "Assigned Internet Protocol Numbers").
pub mod proto {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6: u8 = 41;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NONE: u8 = 59;
    pub const DSTOPTS: u8 = 60;
    pub const MH: u8 = 135;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// The buffer is shorter than the header (or than the length a header field claims).
    #[error("truncated packet")]
    Truncated,
    /// A field holds a value the header cannot have (version, IHL < 5, bad option length…).
    #[error("malformed packet")]
    Malformed,
}

pub type Result<T> = core::result::Result<T, WireError>;

/// The IP version of the packet at the start of `buf` (None when empty or neither 4 nor 6).
pub fn ip_version(buf: &[u8]) -> Option<u8> {
    match buf.first().map(|b| b >> 4) {
        Some(4) => Some(4),
        Some(6) => Some(6),
        _ => None,
    }
}

/// Where the checksum sits in a TCP, UDP, ICMP or ICMPv6 header (None: another protocol).
pub fn l4_checksum_offset(p: u8) -> Option<usize> {
    l4_checksum_field(p).map(|(at, _)| at)
}

/// [`l4_checksum_offset`] and the length of the fixed header that holds the checksum (the
/// shortest segment whose checksum can be read or written).
pub fn l4_checksum_field(p: u8) -> Option<(usize, usize)> {
    match p {
        proto::TCP => Some((tcp::CHECKSUM_OFFSET, tcp::HEADER_LEN)),
        proto::UDP => Some((udp::CHECKSUM_OFFSET, udp::HEADER_LEN)),
        proto::ICMP | proto::ICMPV6 => Some((icmp::CHECKSUM_OFFSET, icmp::HEADER_LEN)),
        _ => None,
    }
}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
#[inline]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
