//! From the library's `Policy` list to the XDP program's rule table (`xfrm_common::PolicyRule`),
//! and the reference lookup the program must agree with.
//!
//! Order is the kernel's: lower `priority` first, ties by position in the config. Only `dir out`
//! policies are compiled for the inside interface: forwarded traffic is looked up in the out
//! direction by `xfrm_lookup` (fwd policies are checked on the inbound, decrypted side).

use std::net::IpAddr;

use anyhow::{bail, Result};
use xfrm_common::{PolicyRule, RuleAction, FAMILY_V4, FAMILY_V6, NO_SA};

use crate::{
    config::Config,
    policy::{Policy, PolicyAction, PolicyDir, Template},
    sa::SaConfig,
    selector::{FlowKey, Prefix, Selector},
};

/// `(addr, mask)` as four network-order words, addr already masked (IPv4 in word 0).
fn prefix_words(p: &Prefix) -> ([u32; 4], [u32; 4]) {
    let (bytes, max): (Vec<u8>, u8) = match p.addr {
        IpAddr::V4(a) => (a.octets().to_vec(), 32),
        IpAddr::V6(a) => (a.octets().to_vec(), 128),
    };
    let len = p.len.min(max);
    let mut addr = [0u8; 16];
    let mut mask = [0u8; 16];
    for (i, b) in bytes.iter().enumerate() {
        let bits = len.saturating_sub(8 * i as u8).min(8);
        let m = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        mask[i] = m;
        addr[i] = b & m;
    }
    let words = |b: &[u8; 16]| {
        let mut w = [0u32; 4];
        for (i, c) in b.chunks_exact(4).enumerate() {
            // As the XDP program loads them: the packet's bytes in memory order.
            w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        w
    };
    (words(&addr), words(&mask))
}

/// One selector + verdict for the XDP table.
pub fn compile_rule(
    sel: &Selector,
    action: RuleAction,
    policy_id: u32,
    sa_id: u32,
) -> Result<PolicyRule> {
    let family = match (sel.src.addr, sel.dst.addr) {
        (IpAddr::V4(_), IpAddr::V4(_)) => FAMILY_V4,
        (IpAddr::V6(_), IpAddr::V6(_)) => FAMILY_V6,
        _ => bail!("policy {policy_id}: src and dst of different address families"),
    };
    let (src, src_mask) = prefix_words(&sel.src);
    let (dst, dst_mask) = prefix_words(&sel.dst);
    Ok(PolicyRule {
        src,
        src_mask,
        dst,
        dst_mask,
        sport: sel.sport.port & sel.sport.mask,
        sport_mask: sel.sport.mask,
        dport: sel.dport.port & sel.dport.mask,
        dport_mask: sel.dport.mask,
        family,
        proto: sel.proto,
        action: action as u8,
        _pad: 0,
        policy_id,
        sa_id,
        priority: 0,
    })
}

/// What the XDP program does with a packet a policy covers.
pub fn rule_action(p: &Policy) -> RuleAction {
    match (p.action, p.templates.is_empty()) {
        (PolicyAction::Block, _) => RuleAction::Block,
        (PolicyAction::Allow, true) => RuleAction::Bypass,
        (PolicyAction::Allow, false) => RuleAction::Protect,
    }
}

/// The outbound table: `dir out` policies sorted the kernel's way. `policy_id` is the index of
/// the policy in `policies`; `sa_of` names the SA the worker will start the bundle with
/// ([`NO_SA`] if none is installed yet: the worker then drops and counts, as the kernel does
/// while it waits for IKE).
pub fn compile_out(
    policies: &[Policy],
    sa_of: impl Fn(&Policy) -> Option<u32>,
) -> Result<Vec<PolicyRule>> {
    let mut order: Vec<usize> = (0..policies.len())
        .filter(|&i| policies[i].dir == PolicyDir::Out)
        .collect();
    order.sort_by_key(|&i| (policies[i].priority, policies[i].index, i));
    order
        .into_iter()
        .map(|i| {
            let p = &policies[i];
            let mut r = compile_rule(
                &p.selector,
                rule_action(p),
                i as u32,
                sa_of(p).unwrap_or(NO_SA),
            )?;
            r.priority = p.priority;
            Ok(r)
        })
        .collect()
}

/// The SA a template resolves to among the configured states (what `xfrm_state_find` does with
/// a static SAD): destination, protocol, mode, and SPI / reqid / source when the template
/// names them. Index into `states`.
pub fn sa_for_template(states: &[SaConfig], t: &Template) -> Option<u32> {
    states
        .iter()
        .position(|s| {
            s.id.daddr == t.dst
                && s.id.proto == t.proto
                && s.mode == t.mode
                && t.spi.is_none_or(|spi| spi == s.id.spi)
                && (t.reqid == 0 || t.reqid == s.reqid)
                && t.src.is_none_or(|src| src == s.saddr)
        })
        .map(|i| i as u32)
}

/// The outbound table of a whole configuration: SA ids are indexes into `cfg.states`, taken
/// from the first template of each bundle.
pub fn compile_config(cfg: &Config) -> Result<Vec<PolicyRule>> {
    compile_out(&cfg.policies, |p| {
        p.templates
            .first()
            .and_then(|t| sa_for_template(&cfg.states, t))
    })
}

/// The reference lookup over the library's types: the out policy the XDP program must pick for
/// `flow` (index into `policies`). Tests compare the two.
pub fn reference_lookup_out(policies: &[Policy], flow: &FlowKey) -> Option<usize> {
    (0..policies.len())
        .filter(|&i| policies[i].dir == PolicyDir::Out && policies[i].selector.matches(flow))
        .min_by_key(|&i| (policies[i].priority, policies[i].index, i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::PortMatch;

    fn sel(src: &str, dst: &str, proto: u8, dport: Option<u16>) -> Selector {
        let pfx = |s: &str| {
            let (a, l) = s.split_once('/').unwrap();
            Prefix {
                addr: a.parse().unwrap(),
                len: l.parse().unwrap(),
            }
        };
        Selector {
            src: pfx(src),
            dst: pfx(dst),
            proto,
            sport: PortMatch::ANY,
            dport: dport.map_or(PortMatch::ANY, PortMatch::exact),
        }
    }

    fn policy(s: Selector, priority: u32, index: u32, action: PolicyAction) -> Policy {
        Policy {
            selector: s,
            dir: PolicyDir::Out,
            priority,
            action,
            templates: vec![],
            index,
        }
    }

    #[test]
    fn prefixes_are_masked_in_packet_byte_order() {
        let r = compile_rule(
            &sel("10.1.2.3/16", "10.9.9.9/32", 17, Some(53)),
            RuleAction::Block,
            7,
            NO_SA,
        )
        .unwrap();
        assert_eq!(r.src[0].to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(r.src_mask[0].to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(r.dst[0].to_ne_bytes(), [10, 9, 9, 9]);
        assert_eq!(r.src[1..], [0, 0, 0]);
        assert_eq!(r.src_mask[1..], [0, 0, 0]);
        assert_eq!((r.dport, r.dport_mask, r.sport_mask), (53, 0xffff, 0));
        assert_eq!((r.family, r.proto, r.policy_id), (FAMILY_V4, 17, 7));

        let r = compile_rule(
            &sel("fd00:1::/33", "::/0", 0, None),
            RuleAction::Bypass,
            0,
            1,
        )
        .unwrap();
        assert_eq!(r.family, FAMILY_V6);
        assert_eq!(r.src_mask[0], u32::MAX);
        assert_eq!(r.src_mask[1].to_ne_bytes(), [0x80, 0, 0, 0]);
        assert_eq!(r.src[0].to_ne_bytes(), [0xfd, 0, 0, 1]);
        assert_eq!(r.dst_mask, [0; 4]);
    }

    #[test]
    fn mixed_families_are_an_error() {
        assert!(compile_rule(
            &sel("10.0.0.0/8", "fd00::/8", 0, None),
            RuleAction::Block,
            3,
            NO_SA
        )
        .is_err());
    }

    #[test]
    fn table_order_is_priority_then_config_order() {
        let any = sel("0.0.0.0/0", "0.0.0.0/0", 0, None);
        let ps = vec![
            policy(any, 10, 0, PolicyAction::Allow),
            policy(any, 5, 1, PolicyAction::Block),
            policy(any, 5, 2, PolicyAction::Allow),
            Policy {
                dir: PolicyDir::In,
                ..policy(any, 0, 3, PolicyAction::Block)
            },
        ];
        let t = compile_out(&ps, |_| None).unwrap();
        assert_eq!(t.iter().map(|r| r.policy_id).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(t[0].action, RuleAction::Block as u8);
        assert_eq!(t[0].sa_id, NO_SA);
        let flow = FlowKey {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: 6,
            sport: 1,
            dport: 2,
        };
        assert_eq!(reference_lookup_out(&ps, &flow), Some(1));
    }
}
