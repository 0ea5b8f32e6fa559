//! The inbound policy check on clear text, on the outside interface: what the kernel's
//! __xfrm_policy_check does for a packet with no sec path (nothing was decrypted) under the
//! `dir in` policy (ip_local_deliver: the transport handlers' xfrm4_policy_check) or the
//! `dir fwd` policy (ip_forward). The rules, from the library's
//! `xfrm::policy_check::xfrm_policy_check_plaintext` (user space compiles them into the
//! rule's action): no policy, or `allow` whose templates are all optional (`level use`):
//! accepted; `allow` with a required template: XfrmInTmplMismatch; `block`: XfrmInPolBlock.
//! A refused packet is dropped here and counted: the kernel beside us holds no xfrm policy
//! (the datapath is ours), so it would forward or deliver it in clear.
//!
//! # In or fwd?
//! The kernel picks by the route: local delivery checks `in`, forwarding checks `fwd`. Here
//! both tables are looked up, and when they agree (both accept, or both refuse for the same
//! reason — always so when the IKE daemon installed the usual in/fwd pairs with equal
//! selectors) that is the verdict, at the cost of two index lookups and no route lookup.
//! Only when they disagree does `bpf_fib_lookup` (the input route lookup of ip_route_input,
//! from the receiving interface) decide: local (or broadcast/multicast, or forwarding
//! disabled on the interface: then only local delivery remains) → in; forwarded → fwd;
//! no route (blackhole, unreachable, prohibit; or a lookup error) → refused, fail closed (the
//! kernel would drop it too). Checking both and dropping on either would be simpler but
//! wrong for asymmetric tables (a `dir fwd` 0/0 rule would then also refuse clear text to
//! the gateway's own addresses); the route lookup is paid only when the tables disagree,
//! so only where one of them refuses the packet.
//!
//! # What the check leaves alone
//! - ARP and ND (parse.rs): never classified.
//! - In only, as the kernel's local delivery does:
//!   - non-first fragments: reassembly comes before the check, so the first fragment's
//!     verdict is the packet's (a first fragment too short for its ports is refused by the
//!     parser, fail closed). Forwarding does not reassemble: the fwd table sees each
//!     fragment, non-first ones with ports 0 (as flowi). One difference: the kernel's
//!     forwarding gives a first fragment ports 0 as well (its flow dissector does not parse
//!     fragments), where this check uses its ports, as local delivery (after reassembly)
//!     and forwarding behind nf_defrag do; fwd rules that name ports may then decide a
//!     forwarded first fragment differently.
//!   - ESP, AH and IPComp: their protocol handlers are `no_policy`; xfrm_input takes them
//!     (and drops them with XfrmInNoStates when it holds no SA), the policy check runs on
//!     what it decrypts. Ours were redirected to the workers before this check.
//!   - UDP to the IKE ports (500, 4500) and to the NAT-T ports of the configuration: the IKE
//!     daemon's sockets carry per-socket bypass policies (strongSwan, libreswan: `setsockopt
//!     IP_XFRM_POLICY` allow, no templates), which __xfrm_policy_check consults before the
//!     SPD; so IKE (with or without the non-ESP marker) and NAT-T keepalives pass. Forwarded
//!     IKE has no such socket: the fwd table decides, as in the kernel.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED},
    bindings::{BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NOT_FWDED},
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNSUPP_LWT},
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use xfrm_common::{
    Config, Counter, RuleAction, TableRef, FAMILY_V4, MAX_ENCAP_PORTS, META_F_FRAGMENT,
};

use crate::{classify, parse::Flow};

const IPPROTO_UDP: u8 = 17;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_AH: u8 = 51;
const IPPROTO_COMP: u8 = 108;
const IKE_PORT: u16 = 500;
const IKE_NATT_PORT: u16 = 4500;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The drop counter for clear text `flow` on the outside, or None: accepted.
#[inline(always)]
pub fn check(ctx: &XdpContext, flow: &Flow, cfg: &Config) -> Option<Counter> {
    if cfg.inp.is_empty() && cfg.fwd.is_empty() {
        return None;
    }
    // Actions as the rules hold them, unknown to the verifier, rather than constants mapped
    // from them: comparing two constants would make it verify the second lookup once per
    // value of the first.
    let a_in = if local_exempt(flow, cfg) {
        ACCEPT
    } else {
        action(flow, cfg.inp)
    };
    let a_fwd = action(flow, cfg.fwd);
    let a = if a_in == a_fwd {
        a_in
    } else {
        match route(ctx, flow) {
            Route::Local => a_in,
            Route::Forward => a_fwd,
            Route::None => {
                if a_in != ACCEPT {
                    a_in
                } else {
                    a_fwd
                }
            }
        }
    };
    if a == ACCEPT {
        None
    } else if a == RuleAction::Protect as u8 {
        Some(Counter::DropInTmplMismatch)
    } else {
        // Block, or an unknown action (a bug in user space): fail closed.
        Some(Counter::DropInPolBlock)
    }
}

/// No rule, or a bypass rule: the clear text is accepted.
const ACCEPT: u8 = RuleAction::Bypass as u8;

/// The action of the rule of `table` that covers `flow` ([`ACCEPT`] without one).
#[inline(always)]
fn action(flow: &Flow, table: TableRef) -> u8 {
    match classify::lookup_table(flow, table) {
        Some(rule) => rule.action,
        None => ACCEPT,
    }
}

/// Never checked against the `in` table (see the module's documentation).
#[inline(always)]
fn local_exempt(flow: &Flow, cfg: &Config) -> bool {
    // A non-first fragment (no transport header, l4_off 0): local delivery reassembles
    // before it checks, so the first fragment's verdict stands for the packet (a packet
    // whose first fragment was dropped is never delivered); fragmented IKE keeps working.
    if flow.l4_off == 0 && flow.flags & META_F_FRAGMENT != 0 {
        return true;
    }
    match flow.proto {
        IPPROTO_ESP | IPPROTO_AH | IPPROTO_COMP => true,
        IPPROTO_UDP => {
            let p = flow.dport;
            let mut ike = p == IKE_PORT || p == IKE_NATT_PORT;
            for i in 0..MAX_ENCAP_PORTS {
                let e = &cfg.encap[i];
                ike |= e.port != 0 && e.port == p;
            }
            ike
        }
        _ => false,
    }
}

enum Route {
    /// Delivered here: the `in` policy.
    Local,
    /// Forwarded: the `fwd` policy.
    Forward,
    /// Neither (no route, or the lookup failed).
    None,
}

/// ip_route_input's answer for `flow` arriving on this interface, via bpf_fib_lookup (the
/// input lookup: full FIB rules, iif = the receiving interface). A BPF subprogram, not
/// inlined: its 64-byte parameter block then lives in a frame of its own, and the verifier
/// walks what follows it about half as many times (`verifier_stats`: 289k instructions for
/// xfrm_outside instead of 528k).
#[inline(never)]
fn route(ctx: &XdpContext, flow: &Flow) -> Route {
    // SAFETY: a plain C struct of integers and unions of integers: all zeros is valid.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = if flow.family == FAMILY_V4 {
        AF_INET
    } else {
        AF_INET6
    };
    p.l4_protocol = flow.proto;
    p.sport = flow.sport.to_be();
    p.dport = flow.dport.to_be();
    p.ifindex = ctx.ingress_ifindex() as u32;
    // tot_len 0: no MTU check (FRAG_NEEDED would still mean "forwarded").
    // Addresses as they sit in the packet (network order), IPv4 in word 0.
    if flow.family == FAMILY_V4 {
        p.__bindgen_anon_3.ipv4_src = flow.src[0];
        p.__bindgen_anon_4.ipv4_dst = flow.dst[0];
    } else {
        p.__bindgen_anon_3.ipv6_src = flow.src;
        p.__bindgen_anon_4.ipv6_dst = flow.dst;
    }
    // SAFETY: the helper reads and writes `p`, on this stack, of the size given.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc < 0 {
        return Route::None;
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS
        | BPF_FIB_LKUP_RET_NO_NEIGH
        | BPF_FIB_LKUP_RET_FRAG_NEEDED
        | BPF_FIB_LKUP_RET_UNSUPP_LWT => Route::Forward,
        // Not RTN_UNICAST: local, broadcast, multicast. Forwarding off on this interface:
        // the packet is delivered here or not at all.
        BPF_FIB_LKUP_RET_NOT_FWDED | BPF_FIB_LKUP_RET_FWD_DISABLED => Route::Local,
        // Blackhole, unreachable, prohibit: the kernel drops it.
        _ => Route::None,
    }
}
