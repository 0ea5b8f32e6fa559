//! The policy lookup (`xfrm_policy_lookup` for the out direction): the first rule of the live
//! table that matches, the table being sorted by priority then config order in user space.
//!
//! A linear scan: cheap for tens of rules and bounded by MAX_POLICIES for the verifier.

use aya_ebpf::maps::Array;
use xfrm_common::{Config, PolicyRule, MAX_POLICIES};

use crate::{parse::Flow, CONFIG, POLICY_OUT};

#[inline(always)]
pub fn lookup(flow: &Flow) -> Option<&'static PolicyRule> {
    let table = CONFIG.get(0).map(|c: &Config| c.out)?;
    let len = table.len();
    let rules: &'static Array<PolicyRule> = &POLICY_OUT;
    for i in 0..MAX_POLICIES {
        if i >= len {
            break;
        }
        let rule = rules.get(table.index(i))?;
        if matches(rule, flow) {
            return Some(rule);
        }
    }
    None
}

/// xfrm_selector_match: family, masked addresses, protocol (0 = any), masked ports.
///
/// Branch-free on purpose: one conditional jump per rule keeps the verifier's jump history of a
/// 1024-rule scan under its limit (8192 jumps per path); a `&&` chain would branch per field.
#[inline(always)]
fn matches(r: &PolicyRule, f: &Flow) -> bool {
    let mut d = 0u32;
    for w in 0..4 {
        d |= (f.src[w] & r.src_mask[w]) ^ r.src[w];
        d |= (f.dst[w] & r.dst_mask[w]) ^ r.dst[w];
    }
    d |= u32::from((f.sport & r.sport_mask) ^ r.sport);
    d |= u32::from((f.dport & r.dport_mask) ^ r.dport);
    d |= u32::from(r.family ^ f.family);
    // Zero when the rule's protocol is 0 (any) or equal to the packet's.
    d |= u32::from(r.proto) * u32::from(r.proto ^ f.proto);
    d == 0
}
