//! The XDP side of xfrm-ebpf: what the kernel's `xfrm4_output` decides before any transform
//! (does a policy cover this packet?), done at the driver for the inside interface.
//!
//! protect → redirect to the AF_XDP socket of the receiving queue, with [`XdpMeta`] in front of
//! the packet; block → XDP_DROP; no policy / bypass → XDP_PASS. ARP and ND always pass. Fail
//! closed: a packet that a protect rule covers is dropped (and counted) when it cannot be handed
//! to a worker — it never leaves in clear.
#![no_std]
#![no_main]

mod classify;
mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_meta,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, XskMap},
    programs::XdpContext,
};
use aya_log_ebpf::{debug, trace};
use xfrm_common::{
    Config, Counter, PolicyRule, RuleAction, XdpMeta, COUNTER_COUNT, MAX_POLICIES, MAX_QUEUES,
    XDP_META_LEN, XDP_META_MAGIC,
};

use crate::parse::Parsed;

/// Two slots of MAX_POLICIES rules; CONFIG says which one is live (see `TableRef`).
#[map(name = "POLICY_OUT")]
static POLICY_OUT: Array<PolicyRule> = Array::with_max_entries(2 * MAX_POLICIES, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// One AF_XDP socket per receive queue, inserted by the workers.
#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT as u32, 0);

#[inline(always)]
fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: a per-CPU slot; XDP runs with preemption off, nobody else writes it now.
        unsafe { *p += 1 };
    }
}

#[xdp]
pub fn xfrm_classify(ctx: XdpContext) -> u32 {
    count(Counter::Rx);
    match parse::parse(&ctx) {
        Parsed::NotIp => {
            count(Counter::PassNotIp);
            xdp_action::XDP_PASS
        }
        Parsed::ArpNd => {
            count(Counter::PassArpNd);
            xdp_action::XDP_PASS
        }
        Parsed::Malformed => {
            count(Counter::PassMalformed);
            xdp_action::XDP_PASS
        }
        Parsed::Unparsed => {
            // Its ports are unknown, so a protect rule might cover it: fail closed.
            count(Counter::DropUnparsed);
            debug!(&ctx, "drop: IPv6 extension header chain too long");
            xdp_action::XDP_DROP
        }
        Parsed::Ip(flow) => match classify::lookup(&flow) {
            None => {
                count(Counter::PassNoPolicy);
                xdp_action::XDP_PASS
            }
            Some(rule) => verdict(&ctx, &flow, rule),
        },
    }
}

#[inline(always)]
fn verdict(ctx: &XdpContext, flow: &parse::Flow, rule: &PolicyRule) -> u32 {
    match RuleAction::from_u8(rule.action) {
        Some(RuleAction::Bypass) => {
            count(Counter::PassBypass);
            xdp_action::XDP_PASS
        }
        Some(RuleAction::Protect) => protect(ctx, flow, rule.policy_id, rule.sa_id),
        // An unknown action is a bug in user space: fail closed.
        Some(RuleAction::Block) | None => {
            count(Counter::DropBlock);
            debug!(ctx, "drop: block policy {}", rule.policy_id);
            xdp_action::XDP_DROP
        }
    }
}

/// Hand the packet to the worker: metadata first, then the redirect; any failure drops.
#[inline(always)]
fn protect(ctx: &XdpContext, flow: &parse::Flow, policy_id: u32, sa_id: u32) -> u32 {
    let queue = ctx.rx_queue_index();
    // Checked before the metadata is written so that a missing socket is counted as such
    // (bpf_redirect_map alone would only return its fallback action).
    if XSKS.get(queue).is_none() {
        count(Counter::DropNoSocket);
        debug!(
            ctx,
            "drop: policy {} but no AF_XDP socket on queue {}", policy_id, queue
        );
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the helper only moves data_meta; every pointer is re-read and checked below.
    let ret = unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(XDP_META_LEN as i32)) };
    if ret != 0 {
        count(Counter::DropMeta);
        return xdp_action::XDP_DROP;
    }
    let meta = ctx.metadata();
    if meta + XDP_META_LEN > ctx.data() {
        count(Counter::DropMeta);
        return xdp_action::XDP_DROP;
    }
    let m = XdpMeta {
        magic: XDP_META_MAGIC,
        flags: flow.flags,
        l3_offset: flow.l3_off,
        l4_offset: flow.l4_off,
        policy_id,
        sa_id,
    };
    // SAFETY: [meta, meta + XDP_META_LEN) was bounds-checked against data just above.
    unsafe { core::ptr::write_unaligned(meta as *mut XdpMeta, m) };
    // Fallback XDP_DROP: should the socket vanish between the check and here, still no clear.
    match XSKS.redirect(queue, u64::from(xdp_action::XDP_DROP)) {
        Ok(action) => {
            count(Counter::Redirect);
            trace!(
                ctx,
                "redirect: policy {} sa {} queue {}",
                policy_id,
                sa_id,
                queue
            );
            action
        }
        Err(_) => {
            count(Counter::DropNoSocket);
            xdp_action::XDP_DROP
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
