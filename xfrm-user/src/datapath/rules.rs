//! From the library's `Policy` list to the XDP program's rule table (`xfrm_common::PolicyRule`),
//! and the reference lookup the program must agree with.
//!
//! One definition of the order: the table is `XfrmDb::policies(Out)` as it stands (the kernel's
//! order, see `xfrm::spd`), and a rule's `policy_id` is its position there, so the worker finds
//! the policy with `db.policies(PolicyDir::Out)[policy_id]` and the XDP program must agree with
//! `XfrmDb::policy_lookup`. Only `dir out` policies are compiled for the inside interface:
//! forwarded traffic is looked up in the out direction by `xfrm_lookup` (fwd policies are
//! checked on the inbound, decrypted side).

use std::net::IpAddr;

use anyhow::{bail, Result};
use xfrm_common::{PolicyRule, RuleAction, FAMILY_V4, FAMILY_V6, NO_SA};

use crate::{
    policy::{Policy, PolicyAction, PolicyDir, Template},
    sa::SaConfig,
    selector::{Prefix, Selector},
    xfrm::XfrmDb,
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

/// The outbound table from policies already in lookup order (`XfrmDb::policies(Out)`);
/// `policy_id` = position. `sa_of` gives the SA id hint the worker may start the bundle with
/// ([`NO_SA`] when none is known statically: the worker resolves the templates per flow with
/// `XfrmDb::tmpl_resolve`, and drops with XfrmOutNoStates as the kernel does without an SA).
pub fn compile_sorted(
    out: &[Policy],
    sa_of: impl Fn(&Policy) -> Option<u32>,
) -> Result<Vec<PolicyRule>> {
    out.iter()
        .enumerate()
        .map(|(i, p)| {
            if p.dir != PolicyDir::Out {
                bail!("policy {}: dir {:?} in the out table", p.index, p.dir);
            }
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

/// The outbound table of a database: its out policies in order; the SA hint is the first SA
/// matching the first template by dst/proto/mode/spi/reqid/src, when there is one.
pub fn compile_db(db: &XfrmDb) -> Result<Vec<PolicyRule>> {
    let states: Vec<SaConfig> = db.states().iter().map(|x| x.cfg.clone()).collect();
    compile_sorted(db.policies(PolicyDir::Out), |p| {
        p.templates
            .first()
            .and_then(|t| sa_for_template(&states, t))
    })
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
        // Same selector twice in one direction is refused by the db: vary the ports.
        let mut ps = ps;
        ps[1].selector.dport = PortMatch::exact(1);
        ps[2].selector.dport = PortMatch::exact(2);
        let db = XfrmDb::new(vec![], ps).unwrap();
        let t = compile_db(&db).unwrap();
        // Positions in the db's out list, which is priority then config order: 1, 2, 0.
        let config_index: Vec<u32> = db
            .policies(PolicyDir::Out)
            .iter()
            .map(|p| p.index)
            .collect();
        assert_eq!(config_index, [1, 2, 0]);
        assert_eq!(t.iter().map(|r| r.policy_id).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(t.iter().map(|r| r.priority).collect::<Vec<_>>(), [5, 5, 10]);
        assert_eq!(t[0].action, RuleAction::Block as u8);
        assert_eq!(t[1].action, RuleAction::Bypass as u8);
        assert_eq!(t[0].sa_id, NO_SA);
        // A policy of another direction cannot enter the out table.
        let inbound = Policy {
            dir: PolicyDir::In,
            ..policy(any, 0, 3, PolicyAction::Block)
        };
        assert!(compile_sorted(&[inbound], |_| None).is_err());
    }
}
