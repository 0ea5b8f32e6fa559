//! What the XDP program and user space share: map names, map key/value layouts, the metadata
//! the program writes in front of a redirected frame, and the verdict counters. `#[repr(C)]`,
//! no pointers, no padding holes the verifier would see as uninitialised.
//!
//! # Classification semantics (the user-space reference classifier must agree)
//! - The flow key is (family, src, dst, proto, sport, dport), as Linux's `struct flowi`: TCP,
//!   UDP, UDP-Lite, SCTP and DCCP give their ports; ICMP and ICMPv6 give type in `sport` and
//!   code in `dport`; every other protocol, and every non-first IPv4/IPv6 fragment, gives 0/0.
//! - Rules are tried in table order (user space sorts them by priority, then by config order,
//!   the kernel's tie-break); the first rule that matches decides.
//! - ARP and IPv6 neighbour discovery / router messages always pass, before any rule.
#![no_std]

/// XDP program on the inside (plaintext) interface: policy lookup.
pub const PROG_CLASSIFY: &str = "xfrm_classify";
/// A program that passes everything: put on a veth peer so that XDP_TX / devmap redirects into
/// it work (veth delivers `ndo_xdp_xmit` frames only to a peer that runs XDP or GRO).
pub const PROG_PASS: &str = "xfrm_pass";

pub const MAP_POLICY_OUT: &str = "POLICY_OUT";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_XSKS: &str = "XSKS";
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Rules per table slot. POLICY_OUT holds two slots (double buffer, see [`TableRef`]).
pub const MAX_POLICIES: u32 = 1024;
/// Entries in XSKS: one AF_XDP socket per receive queue.
pub const MAX_QUEUES: u32 = 64;

/// Address families as in the IP version field.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// What a matching rule does.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    /// `action allow` with no templates: the packet goes on in clear (XDP_PASS).
    Bypass = 0,
    /// `action allow` with templates: to the worker through the queue's AF_XDP socket.
    Protect = 1,
    /// `action block`: XDP_DROP.
    Block = 2,
}

impl RuleAction {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Bypass),
            1 => Some(Self::Protect),
            2 => Some(Self::Block),
            _ => None,
        }
    }
}

/// One selector + verdict, compiled from a `Policy` by user space. Addresses are in network
/// byte order as they sit in the packet (IPv4 in word 0, words 1..3 zero) and stored already
/// masked, so a match is `(addr & mask) == rule` word by word; ports are in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyRule {
    pub src: [u32; 4],
    pub src_mask: [u32; 4],
    pub dst: [u32; 4],
    pub dst_mask: [u32; 4],
    pub sport: u16,
    pub sport_mask: u16,
    pub dport: u16,
    pub dport_mask: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// 0 = any.
    pub proto: u8,
    /// [`RuleAction`] as u8.
    pub action: u8,
    pub _pad: u8,
    /// Index of the policy in user space's policy list; handed to the worker in [`XdpMeta`].
    pub policy_id: u32,
    /// The SA (first of the bundle) user space resolved for this policy, or [`NO_SA`].
    pub sa_id: u32,
    /// The policy's priority (informational: the table is already sorted).
    pub priority: u32,
}

pub const NO_SA: u32 = u32::MAX;

/// Which half of POLICY_OUT is live and how many rules it has, in one u32 so that user space
/// switches tables with a single atomic store: fill the idle half, then flip.
/// Bit 31: slot (0/1); bits 0..15: rule count (≤ MAX_POLICIES).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableRef(pub u32);

impl TableRef {
    pub const fn new(slot: u32, len: u32) -> Self {
        Self(((slot & 1) << 31) | (len & 0xffff))
    }
    pub const fn slot(self) -> u32 {
        self.0 >> 31
    }
    pub const fn len(self) -> u32 {
        self.0 & 0xffff
    }
    pub const fn is_empty(self) -> bool {
        self.len() == 0
    }
    /// Index in POLICY_OUT of rule `i` of this table.
    pub const fn index(self, i: u32) -> u32 {
        self.slot() * MAX_POLICIES + i
    }
}

/// The single value of the CONFIG array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The live outbound policy table.
    pub out: TableRef,
    /// Reserved for flags (e.g. one-armed gateway); 0 today.
    pub flags: u32,
}

/// Written with `bpf_xdp_adjust_meta` just before the packet of a redirected frame: in the
/// UMEM frame it ends where the packet starts. The worker checks `magic` before trusting it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpMeta {
    pub magic: u16,
    /// `META_F_*`.
    pub flags: u16,
    /// Offset of the IP header from the start of the frame (after Ethernet and VLAN tags).
    pub l3_offset: u16,
    /// Offset of the transport header (0 when there is none: non-first fragment).
    pub l4_offset: u16,
    pub policy_id: u32,
    pub sa_id: u32,
}

pub const XDP_META_MAGIC: u16 = 0x5846; // "XF"
pub const XDP_META_LEN: usize = core::mem::size_of::<XdpMeta>();
pub const META_F_IPV6: u16 = 1 << 0;
pub const META_F_VLAN: u16 = 1 << 1;
/// A non-first fragment (no transport header) or a first fragment (MF set).
pub const META_F_FRAGMENT: u16 = 1 << 2;

// The kernel wants metadata in 4-byte units and at most 32 bytes.
const _: () = assert!(XDP_META_LEN.is_multiple_of(4) && XDP_META_LEN <= 32);

/// Per-CPU verdict counters: indexes into COUNTERS (a PerCpuArray<u64>).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every packet the classifier saw.
    Rx = 0,
    /// Neither IPv4 nor IPv6 (ARP included: it has its own counter too).
    PassNotIp,
    /// ARP and ICMPv6 neighbour discovery / router messages: never stolen.
    PassArpNd,
    /// No rule matched.
    PassNoPolicy,
    /// An allow rule without templates matched.
    PassBypass,
    /// Too short or malformed to classify; the kernel's own checks drop it.
    PassMalformed,
    /// Redirected to the queue's AF_XDP socket.
    Redirect,
    /// A block rule matched.
    DropBlock,
    /// Fail closed: a protect rule matched but no socket serves this queue.
    DropNoSocket,
    /// Fail closed: a protect rule matched but the metadata could not be written.
    DropMeta,
    /// Fail closed: an IPv6 extension header chain too long to follow to the transport header.
    DropUnparsed,
}

pub const COUNTER_COUNT: usize = 11;

pub const COUNTER_NAMES: [&str; COUNTER_COUNT] = [
    "rx",
    "pass_not_ip",
    "pass_arp_nd",
    "pass_no_policy",
    "pass_bypass",
    "pass_malformed",
    "redirect",
    "drop_block",
    "drop_no_socket",
    "drop_meta",
    "drop_unparsed",
];

const _: () = assert!(Counter::DropUnparsed as usize + 1 == COUNTER_COUNT);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and arrays of them, no padding (asserted below), any
    // bit pattern valid.
    unsafe impl aya::Pod for super::PolicyRule {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::XdpMeta {}
    unsafe impl aya::Pod for super::TableRef {}
}

const _: () = assert!(core::mem::size_of::<PolicyRule>() == 88);
const _: () = assert!(core::mem::size_of::<Config>() == 8);
const _: () = assert!(XDP_META_LEN == 16);
