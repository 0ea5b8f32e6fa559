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
//!
//! # The policy index (why the lookup stays cheap as the table grows)
//! The rule table is the one definition of the order (position = `policy_id`). Beside it,
//! user space keeps an index that gives, for one packet, the *set of rules that can match*
//! as a bitmap over positions ([`RuleBitmap`], bit i = rule i), one bitmap per field:
//! - source and destination prefix: an LPM trie ([`MAP_POLICY_PREFIX`], [`PrefixKey`]) whose
//!   entry for prefix P holds the rules whose prefix *contains* P. The longest prefix in the
//!   trie that contains the address is P, every rule prefix containing the address contains P
//!   (prefixes containing one address are nested), so P's bitmap is exactly the rules whose
//!   prefix matches the address;
//! - protocol ([`MAP_POLICY_PROTO`], by family and protocol): rules with that protocol or 0;
//! - source and destination port ([`MAP_POLICY_PORT`], by family and port, for the ports
//!   that rules name exactly; other ports take the "any other port" entry of their family):
//!   rules whose port selector accepts that port. Skipped (all rules pass) when no rule of
//!   the table names that port exactly ([`TableRef::SPORT_INDEXED`]…): site-to-site tables
//!   then cost two lookups fewer.
//!
//! The program ANDs the five bitmaps (first their summaries: which 64-rule words hold any
//! candidate) and walks the set bits from the lowest: the first rule
//! that `xfrm_selector_match`es wins, as in a scan of the whole table, because the AND only
//! removes rules that cannot match and keeps the order. A bit set only by over-approximation
//! (a port selector with a partial mask) is caught by the full match of each candidate.
//! Tables of at most 4 rules are scanned without the index (cheaper than its lookups).
//! The cost is five lookups, plus one AND of five words and one full match per candidate;
//! a table of 1024 rules that all cover the same packet (differing only in a partial port
//! mask, say) still costs a scan, in bpf_loop steps.
//!
//! # Three tables: out, in, fwd
//! The same rules and index serve the `dir out` policies (the inside program: what to
//! protect) and the `dir in` / `dir fwd` policies (the outside program: which clear text to
//! refuse, see [`Counter::DropInTmplMismatch`]). Each table has two slots (double buffer);
//! slot `2 * table + half` ([`TABLE_OUT`], [`TABLE_IN`], [`TABLE_FWD`]) is what the index
//! keys' `slot` field and [`proto_index`] take, and the rules of slot `s` are entries
//! `s * MAX_POLICIES ..` of [`MAP_POLICY_RULES`] ([`TableRef::index`]).
#![no_std]

/// XDP program on the inside (plaintext) interface: policy lookup.
pub const PROG_CLASSIFY: &str = "xfrm_classify";
/// XDP program on the outside (wire) interface: ESP, AH and ESP-in-UDP for a local SA go to
/// the worker; with [`CFG_ONE_ARMED`], everything else is then classified as on the inside.
pub const PROG_OUTSIDE: &str = "xfrm_outside";
/// A program that passes everything: put on a veth peer so that XDP_TX / devmap redirects into
/// it work (veth delivers `ndo_xdp_xmit` frames only to a peer that runs XDP or GRO).
pub const PROG_PASS: &str = "xfrm_pass";
/// The TC egress classifier of the outside interface: the gateway's own traffic, whose
/// protected part goes to the daemon's TAP device.
pub const PROG_LOCAL_OUT: &str = "xfrm_local_out";

/// `Array<PolicyRule>`: the rules, [`TABLE_SLOTS`] slots of [`MAX_POLICIES`] (three tables,
/// double-buffered).
pub const MAP_POLICY_RULES: &str = "POLICY_RULES";
/// `LpmTrie<PrefixKey, RuleBitmap>`: source/destination prefix → rules whose prefix covers it.
pub const MAP_POLICY_PREFIX: &str = "POLICY_PREFIX";
/// `Array<RuleBitmap>` at [`proto_index`]: rules with this protocol or protocol 0.
pub const MAP_POLICY_PROTO: &str = "POLICY_PROTO";
/// `HashMap<PortKey, RuleBitmap>`: rules whose port selector accepts this port.
pub const MAP_POLICY_PORT: &str = "POLICY_PORT";
/// `Array<Config>`, one entry.
pub const MAP_CONFIG: &str = "CONFIG";
/// `XskMap`: the inside interface's AF_XDP socket per receive queue.
pub const MAP_XSKS: &str = "XSKS";
/// `XskMap`: the outside interface's AF_XDP socket per receive queue.
pub const MAP_XSKS_OUT: &str = "XSKS_OUT";
/// `HashMap<SaKey, u32>`: (daddr, SPI, protocol) → SA id, the inbound lookup.
pub const MAP_SAS: &str = "SAS";
/// `PerCpuArray<u64>` indexed by [`Counter`]: the inside program's verdicts.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// `PerCpuArray<u64>` indexed by [`Counter`]: the outside program's verdicts.
pub const MAP_COUNTERS_OUT: &str = "COUNTERS_OUT";
/// `Array<u32>` of one entry: the TAP device `xfrm_local_out` redirects to (0: none).
pub const MAP_LOCAL_DEV: &str = "LOCAL_DEV";
/// `PerCpuArray<u64>` indexed by [`Counter`]: the verdicts of `xfrm_local_out`.
pub const MAP_COUNTERS_LOCAL: &str = "COUNTERS_LOCAL";

/// Rules per table slot. POLICY_RULES holds [`TABLE_SLOTS`] (double buffer, see [`TableRef`]).
pub const MAX_POLICIES: u32 = 1024;
/// Entries in XSKS and XSKS_OUT: one AF_XDP socket per receive queue.
pub const MAX_QUEUES: u32 = 64;
/// Entries in SAS.
pub const MAX_SAS: u32 = 65536;
/// u64 words of a [`RuleBitmap`].
pub const BITMAP_WORDS: usize = MAX_POLICIES as usize / 64;
/// Tables ([`TABLE_OUT`], [`TABLE_IN`], [`TABLE_FWD`]) × two slots.
pub const TABLE_SLOTS: u32 = 2 * 3;
/// The out table: slots 0 and 1.
pub const TABLE_OUT: u32 = 0;
/// The `dir in` table: slots 2 and 3.
pub const TABLE_IN: u32 = 1;
/// The `dir fwd` table: slots 4 and 5.
pub const TABLE_FWD: u32 = 2;
/// Entries of POLICY_PREFIX: per slot and per field (source, destination), one per distinct
/// prefix of the table at most.
pub const MAX_PREFIXES: u32 = TABLE_SLOTS * 2 * MAX_POLICIES;
/// Entries of POLICY_PORT: per slot and per field, one per distinct exact port and one "any
/// other port" per family at most.
pub const MAX_PORT_KEYS: u32 = TABLE_SLOTS * 2 * (MAX_POLICIES + 2);

/// Address families as in the IP version field.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// What a matching rule does.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    /// Out: `action allow` with no templates: the packet goes on in clear (XDP_PASS).
    /// In/fwd: clear text is acceptable (no templates, or only optional `level use` ones).
    Bypass = 0,
    /// Out: `action allow` with templates: to the worker through the queue's AF_XDP socket.
    /// In/fwd: a required template, so clear text is refused (XfrmInTmplMismatch).
    Protect = 1,
    /// `action block`: XDP_DROP (in/fwd: XfrmInPolBlock).
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
    /// The policy's priority (informational: the table is already sorted).
    pub priority: u32,
}

/// Which slot of a table is live, how many rules it has, and which port fields its index
/// covers, in one u32 so that user space switches tables with a single atomic store: fill the
/// idle slot, then flip.
/// Bits 29..31: slot (0..[`TABLE_SLOTS`], `2 * table + half`); bit 17: dport indexed; bit 16:
/// sport indexed; bits 0..15: rule count (≤ MAX_POLICIES).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableRef(pub u32);

impl TableRef {
    /// Some rule names a source port exactly: POLICY_PORT has DIM_SPORT entries.
    pub const SPORT_INDEXED: u32 = 1 << 16;
    /// Some rule names a destination port exactly: POLICY_PORT has DIM_DPORT entries.
    pub const DPORT_INDEXED: u32 = 1 << 17;

    pub const fn new(slot: u32, len: u32) -> Self {
        Self(((slot & 7) << 29) | (len & 0xffff))
    }
    pub const fn with_flags(self, flags: u32) -> Self {
        Self(self.0 | (flags & (Self::SPORT_INDEXED | Self::DPORT_INDEXED)))
    }
    pub const fn slot(self) -> u32 {
        self.0 >> 29
    }
    pub const fn len(self) -> u32 {
        self.0 & 0xffff
    }
    pub const fn is_empty(self) -> bool {
        self.len() == 0
    }
    pub const fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }
    /// Index in POLICY_RULES of rule `i` of this table.
    pub const fn index(self, i: u32) -> u32 {
        self.slot() * MAX_POLICIES + i
    }
}

/// A set of rule positions of one table slot: bit `i % 64` of `words[i / 64]` is rule `i`;
/// bit `w` of `summary` says `words[w]` is not zero, so that a walk over the AND of several
/// bitmaps visits only the words where all of them have candidates.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleBitmap {
    pub words: [u64; BITMAP_WORDS],
    pub summary: u64,
}

impl RuleBitmap {
    pub fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
        self.summary |= 1 << (i / 64);
    }
    pub fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }
    pub fn is_empty(&self) -> bool {
        self.summary == 0
    }
    /// The intersection (summary included: a superset of the words that are not zero).
    pub fn and(&self, o: &Self) -> Self {
        let mut r = *self;
        for (w, x) in r.words.iter_mut().zip(o.words) {
            *w &= x;
        }
        r.summary &= o.summary;
        r
    }
}

/// Which address a [`PrefixKey`] indexes.
pub const DIM_SRC: u8 = 0;
pub const DIM_DST: u8 = 1;
/// Which port a [`PortKey`] indexes.
pub const DIM_SPORT: u8 = 0;
pub const DIM_DPORT: u8 = 1;

/// The data of a POLICY_PREFIX key (after the LPM prefix length). The first
/// [`PREFIX_KEY_HEADER_BITS`] bits are always part of the prefix, so a lookup only meets
/// entries of its own slot, field and family; the address follows, as in [`PolicyRule`]
/// (packet byte order, IPv4 in word 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    /// Table slot (`2 * table + half`), see [`TableRef`].
    pub slot: u8,
    /// [`DIM_SRC`] or [`DIM_DST`].
    pub dim: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: u8,
    pub addr: [u32; 4],
}

/// The LPM prefix length of a [`PrefixKey`] for an address prefix of `len` bits.
pub const PREFIX_KEY_HEADER_BITS: u32 = 32;

/// POLICY_PORT key: rules of this slot and family whose `dim` port selector accepts `port`
/// (whatever their protocol: the protocol bitmap takes care of that). `any_other` = 1 is the
/// entry for every port no rule names exactly (`port` then 0). Ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub slot: u8,
    /// [`DIM_SPORT`] or [`DIM_DPORT`].
    pub dim: u8,
    pub family: u8,
    pub any_other: u8,
    pub port: u16,
    pub _pad: u16,
}

/// POLICY_PROTO index of (slot, family, protocol).
pub const fn proto_index(slot: u32, family: u8, proto: u8) -> u32 {
    slot * 512 + (family == FAMILY_V6) as u32 * 256 + proto as u32
}
/// Entries of POLICY_PROTO.
pub const PROTO_ENTRIES: u32 = TABLE_SLOTS * 512;

/// SAS key: what `xfrm_state_lookup` takes from an inbound packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SaKey {
    /// Destination address, packet byte order, IPv4 in word 0 (as [`PolicyRule`]).
    pub daddr: [u32; 4],
    /// The SPI as a number (host order: `u32::from_be_bytes` of the header's bytes).
    pub spi: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// 50 (ESP) or 51 (AH).
    pub proto: u8,
    pub _pad: u16,
}

/// Encapsulation of a UDP port in [`Config::encap`] (what the IKE daemon's socket on that
/// port would have asked with UDP_ENCAP).
pub const ENCAP_NONE: u8 = 0;
/// UDP_ENCAP_ESPINUDP (RFC 3948): ESP right after the UDP header, IKE behind 4 zero bytes.
pub const ENCAP_ESPINUDP: u8 = 1;
/// UDP_ENCAP_ESPINUDP_NON_IKE: ESP behind 8 zero bytes.
pub const ENCAP_ESPINUDP_NON_IKE: u8 = 2;

/// One NAT-T port of the outside program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncapPort {
    /// Local UDP port (host order); 0 = unused slot.
    pub port: u16,
    /// `ENCAP_*`.
    pub kind: u8,
    pub _pad: u8,
}

/// NAT-T ports the outside program knows (4500 is the usual one).
pub const MAX_ENCAP_PORTS: usize = 4;

/// [`Config::flags`]: the outside program also classifies what is not inbound IPsec against
/// the out policies, as the inside program does (one-armed gateway: inside = outside).
pub const CFG_ONE_ARMED: u32 = 1 << 0;
/// BPF_PROG_TEST_RUN only (benchmarks with `repeat`, which re-run one buffer): the programs
/// take the [`XdpMeta`] they pushed off again after the redirect call. Never set on an
/// attached program.
pub const CFG_TEST_REWIND: u32 = 1 << 1;

/// The single value of the CONFIG array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The live outbound policy table.
    pub out: TableRef,
    /// `CFG_*`.
    pub flags: u32,
    /// UDP ports carrying ESP-in-UDP, for the outside program.
    pub encap: [EncapPort; MAX_ENCAP_PORTS],
    /// The live `dir in` table (clear text to a local address), for the outside program.
    pub inp: TableRef,
    /// The live `dir fwd` table (clear text to be forwarded), for the outside program.
    pub fwd: TableRef,
}

/// The classifier's word to the worker, carried **in the frame**: the XDP program pushes it
/// with `bpf_xdp_adjust_head` in front of the Ethernet header of every frame it redirects to
/// an AF_XDP socket, so the RX descriptor starts at it and the packet follows
/// [`XDP_META_LEN`] bytes later. The contract (docs/architecture.md, "XdpMeta"):
///
/// - Only our programs redirect into XSKS/XSKS_OUT, and they push the header on every
///   redirect, before the redirect: every frame on our sockets has it. The worker takes the
///   first [`XDP_META_LEN`] bytes of each RX descriptor as the header, checks `magic` and
///   that the offsets fit the frame, and drops (counting `bad_meta`) any frame that fails —
///   it never guesses whether a frame has a header.
/// - The worker transmits from the packet's start (or the outer headers it pushed in front of
///   it), so the header never reaches a wire.
/// - `data_meta` (`bpf_xdp_adjust_meta`) is not used: some kernels refuse the helper in XDP
///   programs and drivers without metadata support fail it at run time; `adjust_head` works
///   wherever XDP does, native or generic.
///
/// From the inside program: `policy_id` of the matching protect rule. From the outside
/// program for inbound IPsec ([`META_F_INBOUND`]): `policy_id` = [`NO_POLICY`], and the
/// flags say how the SA's header is carried. Offsets count from the Ethernet header, not
/// from the start of the header.
///
/// Neither the SA the program found nor the transport header's offset is carried: the
/// worker reads the IP header again anyway (the IPv4 checksum, the length, the padding to
/// cut) and the SPI and sequence number for the replay check, so an SA slot handed over
/// would still have to be checked against (daddr, SPI, protocol) of the packet, which costs
/// what the lookup costs (docs/architecture.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpMeta {
    pub magic: u16,
    /// `META_F_*`.
    pub flags: u16,
    /// Offset of the IP header from the start of the frame (after Ethernet and VLAN tags).
    pub l3_offset: u16,
    /// Zero (every byte the program writes is set).
    pub _pad: u16,
    pub policy_id: u32,
}

pub const XDP_META_MAGIC: u16 = 0x5846; // "XF"
pub const XDP_META_LEN: usize = core::mem::size_of::<XdpMeta>();
pub const META_F_IPV6: u16 = 1 << 0;
pub const META_F_VLAN: u16 = 1 << 1;
/// A non-first fragment (no transport header) or a first fragment (MF set).
pub const META_F_FRAGMENT: u16 = 1 << 2;
/// Inbound IPsec for a local SA (outside program, found in SAS): no policy.
pub const META_F_INBOUND: u16 = 1 << 3;
/// With META_F_INBOUND: ESP in UDP (NAT-T).
pub const META_F_UDP_ENCAP: u16 = 1 << 4;
/// With META_F_UDP_ENCAP: the port is UDP_ENCAP_ESPINUDP_NON_IKE (8 zero bytes before ESP).
pub const META_F_NON_IKE: u16 = 1 << 5;

/// `XdpMeta::policy_id` of inbound IPsec.
pub const NO_POLICY: u32 = u32::MAX;

// Keeps the packet behind it 4-byte aligned as the driver placed it (the IP header stays
// where the NIC's alignment put it).
const _: () = assert!(XDP_META_LEN.is_multiple_of(4) && XDP_META_LEN <= 32);

/// Per-CPU verdict counters: indexes into COUNTERS (inside program) and COUNTERS_OUT
/// (outside program), both PerCpuArray<u64>; user space sums the CPUs. Every packet counts
/// `rx` and exactly one verdict counter.
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
    /// Fail closed: a protect rule (or inbound SA) matched but the [`XdpMeta`] header could
    /// not be pushed in front of the frame (no headroom).
    DropMeta,
    /// Fail closed: an IPv6 extension header chain too long to follow to the transport
    /// header, or a first fragment too short to hold its ports (RFC 1858). The outside
    /// program drops these only where a rule could cover them: one-armed, or with in/fwd
    /// policies.
    DropUnparsed,
    // The outside program.
    /// Not ESP, AH or UDP to a NAT-T port (and not one-armed): the host's traffic.
    PassNotIpsec,
    /// ESP/AH/ESP-in-UDP whose (daddr, SPI, protocol) is not in SAS: the kernel's business.
    PassUnknownSpi,
    /// On a NAT-T port with a non-ESP marker (or too short to be ESP): IKE, for the daemon.
    PassIke,
    /// A NAT-T keepalive (one 0xFF byte): passed, the kernel's encap socket eats it as it
    /// would without us (no SA state depends on it).
    PassNattKeepalive,
    /// An IPv4/IPv6 fragment of ESP, AH or ESP-in-UDP: the kernel reassembles it first.
    PassFragment,
    /// Inbound IPsec for a known SA, redirected to the queue's AF_XDP socket.
    RedirectIn,
    /// Inbound IPsec for a known SA, but no socket on the queue: dropped, not handed to a
    /// kernel that holds none of our SAs (it would answer ICMP errors to the peer at best).
    DropNoSocketIn,
    /// Clear text that the `dir in` (local destination) or `dir fwd` (forwarded) policy
    /// covering it wants protected (a required template): dropped, as __xfrm_policy_check
    /// drops it and counts XfrmInTmplMismatch.
    DropInTmplMismatch,
    /// Clear text under an in/fwd `action block` policy: dropped (XfrmInPolBlock).
    DropInPolBlock,
}

pub const COUNTER_COUNT: usize = 20;

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
    "pass_not_ipsec",
    "pass_unknown_spi",
    "pass_ike",
    "pass_natt_keepalive",
    "pass_fragment",
    "redirect_in",
    "drop_no_socket_in",
    "drop_in_tmpl_mismatch",
    "drop_in_pol_block",
];

const _: () = assert!(Counter::DropInPolBlock as usize + 1 == COUNTER_COUNT);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and arrays of them, no padding (asserted below), any
    // bit pattern valid.
    unsafe impl aya::Pod for super::PolicyRule {}
    // SAFETY: as for PolicyRule.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as for PolicyRule.
    unsafe impl aya::Pod for super::XdpMeta {}
    // SAFETY: as for PolicyRule.
    unsafe impl aya::Pod for super::TableRef {}
    // SAFETY: as for PolicyRule.
    unsafe impl aya::Pod for super::RuleBitmap {}
    // SAFETY: as for PolicyRule.
    unsafe impl aya::Pod for super::PrefixKey {}
    // SAFETY: as for PolicyRule.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as for PolicyRule.
    unsafe impl aya::Pod for super::SaKey {}
    // SAFETY: as for PolicyRule.
    unsafe impl aya::Pod for super::EncapPort {}
}

const _: () = assert!(core::mem::size_of::<PolicyRule>() == 84);
const _: () = assert!(core::mem::size_of::<Config>() == 16 + 4 * MAX_ENCAP_PORTS);
const _: () = assert!(TABLE_SLOTS <= 8 && TABLE_SLOTS * MAX_POLICIES <= u32::MAX / 2);
const _: () = assert!(core::mem::size_of::<PrefixKey>() == 20);
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);
const _: () = assert!(MAX_POLICIES <= 0xffff && MAX_POLICIES.is_multiple_of(64));
const _: () = assert!(core::mem::size_of::<SaKey>() == 24);
const _: () = assert!(core::mem::size_of::<RuleBitmap>() == 8 * BITMAP_WORDS + 8);
const _: () = assert!(BITMAP_WORDS <= 64 && BITMAP_WORDS.is_power_of_two());
const _: () = assert!(XDP_META_LEN == 12);
