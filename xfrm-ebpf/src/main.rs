//! The XDP side of xfrm-ebpf, two programs:
//!
//! - `xfrm_classify`, on the inside (plaintext) interface: what the kernel's `xfrm_lookup`
//!   decides before any transform (does a policy cover this packet?), done at the driver.
//!   protect → redirect to the AF_XDP socket of the receiving queue, with [`XdpMeta`] pushed
//!   in front of the frame; block → XDP_DROP; no policy / bypass → XDP_PASS.
//! - `xfrm_outside`, on the outside (wire) interface: ESP, AH and ESP-in-UDP addressed to one
//!   of our SAs → redirect with the SA id; then the inbound policy check on what is left
//!   (policy_check.rs): clear text that the in/fwd policy covering it wants protected, or
//!   blocks, → XDP_DROP; everything else (IKE, NAT-T keepalives, unknown SPIs, the host's
//!   own traffic) → XDP_PASS. With `CFG_ONE_ARMED` (inside = outside) what passes the check
//!   is then classified as on the inside (the kernel's order too: ip_forward checks the fwd
//!   policy before xfrm_lookup applies the out policy).
//!
//! - `xfrm_local_out`, a TC egress classifier on the outside interface: the gateway's own
//!   traffic (it never passes an XDP program). protect → redirect to the daemon's TAP device
//!   (`LOCAL_DEV`), whose reader encrypts it as the workers do; block → drop; else pass.
//!   The kernel's counterpart is the xfrm_lookup in ip_route_output_flow for local sockets.
//!
//! ARP and ND always pass. Fail closed: a packet that a protect rule covers is dropped (and
//! counted) when it cannot be handed to a worker — it never leaves in clear.
#![no_std]
#![no_main]

mod classify;
mod inbound;
mod parse;
mod policy_check;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, XskMap},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{debug, trace};
use xfrm_common::{
    Config, Counter, PolicyRule, PortKey, PrefixKey, RuleAction, RuleBitmap, SaKey, XdpMeta,
    CFG_ONE_ARMED, CFG_TEST_REWIND, COUNTER_COUNT, MAX_POLICIES, MAX_PORT_KEYS, MAX_PREFIXES,
    MAX_QUEUES, MAX_SAS, META_F_INBOUND, NO_POLICY, PROTO_ENTRIES, TABLE_SLOTS, XDP_META_LEN,
    XDP_META_MAGIC,
};

use crate::parse::Parsed;

/// The rules of the three tables (out, in, fwd), two slots of MAX_POLICIES each; CONFIG says
/// which slot of each is live (see `TableRef`).
#[map(name = "POLICY_RULES")]
static POLICY_RULES: Array<PolicyRule> = Array::with_max_entries(TABLE_SLOTS * MAX_POLICIES, 0);

/// The policy index (see xfrm-common): prefix → candidate rules, per slot.
#[map(name = "POLICY_PREFIX")]
static POLICY_PREFIX: LpmTrie<PrefixKey, RuleBitmap> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

#[map(name = "POLICY_PROTO")]
static POLICY_PROTO: Array<RuleBitmap> = Array::with_max_entries(PROTO_ENTRIES, 0);

#[map(name = "POLICY_PORT")]
static POLICY_PORT: HashMap<PortKey, RuleBitmap> = HashMap::with_max_entries(MAX_PORT_KEYS, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// (daddr, SPI, protocol) → SA id.
#[map(name = "SAS")]
static SAS: HashMap<SaKey, u32> = HashMap::with_max_entries(MAX_SAS, 0);

/// One AF_XDP socket per receive queue of the inside interface, inserted by the workers.
#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

/// The same for the outside interface (a socket only takes frames of its own device/queue).
#[map(name = "XSKS_OUT")]
static XSKS_OUT: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT as u32, 0);

#[map(name = "COUNTERS_OUT")]
static COUNTERS_OUT: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT as u32, 0);

/// The ifindex of the daemon's TAP device for the host's own protected traffic (0: none, so
/// `xfrm_local_out` drops what it would protect).
#[map(name = "LOCAL_DEV")]
static LOCAL_DEV: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "COUNTERS_LOCAL")]
static COUNTERS_LOCAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT as u32, 0);

/// Which interface a run is on: its socket map and its counters.
struct Side {
    xsks: &'static XskMap,
    counters: &'static PerCpuArray<u64>,
}

const INSIDE: Side = Side {
    xsks: &XSKS,
    counters: &COUNTERS,
};
const OUTSIDE: Side = Side {
    xsks: &XSKS_OUT,
    counters: &COUNTERS_OUT,
};

impl Side {
    #[inline(always)]
    fn count(&self, c: Counter) {
        if let Some(p) = self.counters.get_ptr_mut(c as u32) {
            // SAFETY: a per-CPU slot; XDP runs with preemption off, nobody else writes it now.
            unsafe { *p += 1 };
        }
    }

    /// This CPU's slot of counter `c`, to count into later ([`count_slot`]). For a verdict
    /// counter chosen long before it is counted: a counter number kept in a register is a
    /// constant the verifier must track exactly (it marks constant map keys precise), so
    /// every policy lookup in between would be verified once per possible counter; a
    /// pointer to the slot looks the same to it whatever the counter.
    #[inline(always)]
    fn slot(&self, c: Counter) -> Option<*mut u64> {
        self.counters.get_ptr_mut(c as u32)
    }

    #[inline(always)]
    fn pass(&self, c: Counter) -> u32 {
        self.count(c);
        xdp_action::XDP_PASS
    }
}

/// Count into a slot taken with [`Side::slot`].
#[inline(always)]
fn count_slot(slot: Option<*mut u64>) {
    if let Some(p) = slot {
        // SAFETY: as in `Side::count`: this CPU's slot, alive for the program run.
        unsafe { *p += 1 };
    }
}

#[xdp]
pub fn xfrm_classify(ctx: XdpContext) -> u32 {
    INSIDE.count(Counter::Rx);
    match parse::parse(&ctx) {
        Parsed::NotIp => INSIDE.pass(Counter::PassNotIp),
        Parsed::ArpNd => INSIDE.pass(Counter::PassArpNd),
        Parsed::Malformed => INSIDE.pass(Counter::PassMalformed),
        Parsed::Unparsed => unparsed(&ctx, &INSIDE),
        Parsed::Ip(flow) => policy(&ctx, &flow, &INSIDE),
    }
}

#[xdp]
pub fn xfrm_outside(ctx: XdpContext) -> u32 {
    OUTSIDE.count(Counter::Rx);
    let Some(cfg) = CONFIG.get(0) else {
        return OUTSIDE.pass(Counter::PassMalformed);
    };
    let one_armed = cfg.flags & CFG_ONE_ARMED != 0;
    let checks_in = !cfg.inp.is_empty() || !cfg.fwd.is_empty();
    match parse::parse(&ctx) {
        Parsed::NotIp => OUTSIDE.pass(Counter::PassNotIp),
        Parsed::ArpNd => OUTSIDE.pass(Counter::PassArpNd),
        Parsed::Malformed => OUTSIDE.pass(Counter::PassMalformed),
        // An in/fwd or (one-armed) out rule might cover it: fail closed.
        Parsed::Unparsed if one_armed || checks_in => unparsed(&ctx, &OUTSIDE),
        // No rule to cover it: whatever it hides, it is not ours to refuse or protect.
        Parsed::Unparsed => OUTSIDE.pass(Counter::PassMalformed),
        Parsed::Ip(flow) => {
            let v = inbound::classify(&ctx, &flow, cfg);
            if v.why == Counter::RedirectIn {
                let meta = XdpMeta {
                    magic: XDP_META_MAGIC,
                    flags: flow.flags | v.flags | META_F_INBOUND,
                    l3_offset: flow.l3_off,
                    _pad: 0,
                    policy_id: NO_POLICY,
                };
                return to_worker(
                    &ctx,
                    &OUTSIDE,
                    &meta,
                    Counter::RedirectIn,
                    Counter::DropNoSocketIn,
                );
            }
            let pass = OUTSIDE.slot(v.why);
            // Not decrypted by us: clear text (or IPsec the kernel keeps), which the in/fwd
            // policy covering it may refuse.
            if let Some(why) = policy_check::check(&ctx, &flow, cfg) {
                OUTSIDE.count(why);
                debug!(&ctx, "drop: clear text refused by the in/fwd policy");
                return xdp_action::XDP_DROP;
            }
            if one_armed {
                policy(&ctx, &flow, &OUTSIDE)
            } else {
                count_slot(pass);
                xdp_action::XDP_PASS
            }
        }
    }
}

/// Its ports are unknown, so a protect rule might cover it: fail closed.
#[inline(always)]
fn unparsed(ctx: &XdpContext, side: &Side) -> u32 {
    side.count(Counter::DropUnparsed);
    debug!(ctx, "drop: IPv6 extension header chain too long");
    xdp_action::XDP_DROP
}

#[inline(always)]
fn policy(ctx: &XdpContext, flow: &parse::Flow, side: &Side) -> u32 {
    let Some(rule) = classify::lookup(flow) else {
        return side.pass(Counter::PassNoPolicy);
    };
    match RuleAction::from_u8(rule.action) {
        Some(RuleAction::Bypass) => side.pass(Counter::PassBypass),
        Some(RuleAction::Protect) => {
            let meta = XdpMeta {
                magic: XDP_META_MAGIC,
                flags: flow.flags,
                l3_offset: flow.l3_off,
                _pad: 0,
                policy_id: rule.policy_id,
            };
            to_worker(ctx, side, &meta, Counter::Redirect, Counter::DropNoSocket)
        }
        // An unknown action is a bug in user space: fail closed.
        Some(RuleAction::Block) | None => {
            side.count(Counter::DropBlock);
            debug!(ctx, "drop: block policy {}", rule.policy_id);
            xdp_action::XDP_DROP
        }
    }
}

/// Hand the packet to the worker: [`XdpMeta`] pushed in front of the frame, then the
/// redirect; any failure drops. The header goes in the frame itself (`bpf_xdp_adjust_head`),
/// not in `data_meta`: kernels and drivers without XDP metadata refuse or fail
/// `bpf_xdp_adjust_meta`, every XDP driver has the headroom. The contract is in xfrm-common.
#[inline(always)]
fn to_worker(ctx: &XdpContext, side: &Side, m: &XdpMeta, ok: Counter, no_socket: Counter) -> u32 {
    let queue = ctx.rx_queue_index();
    // Checked before the header is pushed so that a missing socket is counted as such
    // (bpf_redirect_map alone would only return its fallback action).
    if side.xsks.get(queue).is_none() {
        side.count(no_socket);
        debug!(
            ctx,
            "drop: policy {} but no AF_XDP socket on queue {}", m.policy_id, queue
        );
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the helper only moves ctx->data into the headroom; every packet pointer is
    // re-read and bounds-checked below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(XDP_META_LEN as i32)) } != 0 {
        side.count(Counter::DropMeta);
        return xdp_action::XDP_DROP;
    }
    let start = ctx.data();
    if start + XDP_META_LEN > ctx.data_end() {
        side.count(Counter::DropMeta);
        return xdp_action::XDP_DROP;
    }
    // SAFETY: [start, start + XDP_META_LEN) was bounds-checked against data_end just above.
    unsafe { core::ptr::write_unaligned(start as *mut XdpMeta, *m) };
    // Fallback XDP_DROP: should the socket vanish between the check and here, still no clear.
    let action = match side.xsks.redirect(queue, u64::from(xdp_action::XDP_DROP)) {
        Ok(action) => {
            side.count(ok);
            trace!(ctx, "redirect: policy {} queue {}", m.policy_id, queue);
            action
        }
        Err(_) => {
            side.count(no_socket);
            return xdp_action::XDP_DROP;
        }
    };
    if CONFIG
        .get(0)
        .is_some_and(|c| c.flags & CFG_TEST_REWIND != 0)
    {
        // BPF_PROG_TEST_RUN with `repeat` runs again on the same buffer (it performs no
        // redirect): take the header off so that the next run sees the same packet.
        // SAFETY: as above; the pointers are not used after this.
        unsafe { bpf_xdp_adjust_head(ctx.ctx, XDP_META_LEN as i32) };
    }
    action
}

/// Headers `xfrm_local_out` needs in the skb's linear part: up to the transport ports at the
/// parser's furthest offset.
const LOCAL_PULL_LEN: u32 = (parse::MAX_L4_OFFSET + 8) as u32;

#[inline(always)]
fn count_local(c: Counter) {
    if let Some(p) = COUNTERS_LOCAL.get_ptr_mut(c as u32) {
        // SAFETY: a per-CPU slot; TC programs run with migration off on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn local_verdict(c: Counter, verdict: i32) -> i32 {
    count_local(c);
    verdict
}

/// TC egress on the outside interface: the gateway's own output (forwarded traffic that a
/// policy covers was taken at the inside XDP already and never reaches here; the workers'
/// AF_XDP transmissions bypass TC). Same parser, same policy index as `xfrm_classify`.
/// What a protect rule covers goes to the TAP device; with none (daemon gone: the TAP dies
/// with its last fd) it is dropped, never sent in clear.
#[classifier]
pub fn xfrm_local_out(ctx: TcContext) -> i32 {
    count_local(Counter::Rx);
    // GSO and paged skbs: bring the headers into the linear part the parser reads. A failure
    // leaves it short, and a short IP packet is dropped below (not passed).
    let _ = ctx.pull_data(core::cmp::min(ctx.len(), LOCAL_PULL_LEN));
    match parse::parse(&ctx) {
        Parsed::NotIp => local_verdict(Counter::PassNotIp, TC_ACT_OK),
        Parsed::ArpNd => local_verdict(Counter::PassArpNd, TC_ACT_OK),
        // Our own stack's packets are well formed: one we cannot read might be covered.
        Parsed::Malformed | Parsed::Unparsed => local_verdict(Counter::DropUnparsed, TC_ACT_SHOT),
        Parsed::Ip(flow) => {
            let Some(rule) = classify::lookup(&flow) else {
                return local_verdict(Counter::PassNoPolicy, TC_ACT_OK);
            };
            match RuleAction::from_u8(rule.action) {
                Some(RuleAction::Bypass) => local_verdict(Counter::PassBypass, TC_ACT_OK),
                Some(RuleAction::Protect) => {
                    let dev = LOCAL_DEV.get(0).copied().unwrap_or(0);
                    if dev == 0 {
                        return local_verdict(Counter::DropNoSocket, TC_ACT_SHOT);
                    }
                    count_local(Counter::Redirect);
                    // SAFETY: a helper call with plain integers. TC_ACT_REDIRECT, or
                    // TC_ACT_SHOT for flags it refuses; a vanished device drops at redirect.
                    unsafe { bpf_redirect(dev, 0) as i32 }
                }
                Some(RuleAction::Block) | None => local_verdict(Counter::DropBlock, TC_ACT_SHOT),
            }
        }
    }
}

/// For a veth peer: veth hands XDP_TX/redirected frames only to a peer that runs XDP.
#[xdp]
pub fn xfrm_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
