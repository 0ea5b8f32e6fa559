//! From the library's `Policy` list to the XDP program's rule table (`xfrm_common::PolicyRule`),
//! and the reference lookup the program must agree with.
//!
//! One definition of the order: the table is `XfrmDb::policies(Out)` as it stands (the kernel's
//! order, see `xfrm::spd`), and a rule's `policy_id` is its position there, so the worker finds
//! the policy with `db.policies(PolicyDir::Out)[policy_id]` and the XDP program must agree with
//! `XfrmDb::policy_lookup`. The `dir out` policies are compiled for the inside interface:
//! forwarded traffic is looked up in the out direction by `xfrm_lookup`. The `dir in` and
//! `dir fwd` policies are compiled for the outside interface, in the same form, to refuse
//! the clear text they want protected ([`inbound_rule_action`], [`plaintext_check`]); what
//! the workers decrypt is checked against them in user space (`xfrm::policy_check`).

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{bail, Result};
use xfrm_common::{
    EncapPort, PolicyRule, PortKey, PrefixKey, RuleAction, RuleBitmap, SaKey, TableRef, DIM_DPORT,
    DIM_DST, DIM_SPORT, DIM_SRC, ENCAP_ESPINUDP, ENCAP_ESPINUDP_NON_IKE, FAMILY_V4, FAMILY_V6,
    MAX_ENCAP_PORTS, MAX_POLICIES, MAX_SAS, PREFIX_KEY_HEADER_BITS,
};

use crate::{
    policy::{Policy, PolicyAction, PolicyDir},
    sa::EncapType,
    selector::{FlowKey, Prefix, Selector},
    stats::XfrmStat,
    xfrm::{policy_check::xfrm_policy_check_plaintext, InputTables, XfrmDb},
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
pub fn compile_rule(sel: &Selector, action: RuleAction, policy_id: u32) -> Result<PolicyRule> {
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
/// `policy_id` = position. No SA goes with a rule: the worker resolves the templates per flow
/// with `XfrmDb::tmpl_resolve`, and drops with XfrmOutNoStates as the kernel does without an
/// SA.
pub fn compile_sorted(out: &[Policy]) -> Result<Vec<PolicyRule>> {
    out.iter()
        .enumerate()
        .map(|(i, p)| {
            if p.dir != PolicyDir::Out {
                bail!("policy {}: dir {:?} in the out table", p.index, p.dir);
            }
            let mut r = compile_rule(&p.selector, rule_action(p), i as u32)?;
            r.priority = p.priority;
            Ok(r)
        })
        .collect()
}

/// What the outside program does with clear text that an in/fwd policy covers: the library's
/// own check with an empty sec path ([`xfrm_policy_check_plaintext`]) decides, so the two
/// cannot drift. Bypass = accepted (no templates, or only optional ones), Protect = a
/// required template (XfrmInTmplMismatch), Block = XfrmInPolBlock.
pub fn inbound_rule_action(p: &Policy) -> RuleAction {
    match xfrm_policy_check_plaintext(Some(p)) {
        Ok(()) => RuleAction::Bypass,
        Err(XfrmStat::XfrmInPolBlock) => RuleAction::Block,
        Err(_) => RuleAction::Protect,
    }
}

/// The `dir in` or `dir fwd` table of a database, in lookup order (`policy_id` = position
/// in `XfrmDb::policies(dir)`).
pub fn compile_inbound(db: &XfrmDb, dir: PolicyDir) -> Result<Vec<PolicyRule>> {
    if dir == PolicyDir::Out {
        bail!("compile_inbound: the out table is compile_db's");
    }
    db.policies(dir)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut r = compile_rule(&p.selector, inbound_rule_action(p), i as u32)?;
            r.priority = p.priority;
            Ok(r)
        })
        .collect()
}

/// Where the kernel takes a packet that arrived on the outside (ip_route_input): the
/// outside program asks `bpf_fib_lookup` when the in and fwd tables disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRoute {
    /// Local delivery (also broadcast, multicast, or forwarding off on the interface):
    /// the `dir in` policy.
    Local,
    /// Forwarded: the `dir fwd` policy.
    Forward,
    /// No route (blackhole, unreachable, prohibit): the kernel drops it.
    Unroutable,
}

/// UDP ports of IKE (RFC 7296: 500, and 4500 for NAT traversal).
pub const IKE_PORTS: [u16; 2] = [500, 4500];

/// The outside program's inbound policy check on clear text `flow` (not redirected to a
/// worker), in the library's terms; the program must agree (tests/classifier_test_run.rs).
/// Local delivery checks `dir in`, except what local delivery never checks in clear:
/// non-first fragments (reassembled first: the first fragment's verdict is the packet's),
/// ESP/AH/IPComp (xfrm_input's), and UDP to IKE's ports and the NAT-T ports of `tables`
/// (the IKE daemon's sockets bypass the SPD). Forwarding checks `dir fwd`, everything.
/// Unroutable: refused if either refuses (fail closed; the kernel drops it anyway).
pub fn plaintext_check(
    db: &XfrmDb,
    tables: &InputTables,
    flow: &FlowKey,
    non_first_fragment: bool,
    route: InputRoute,
) -> Result<(), XfrmStat> {
    let check = |dir| xfrm_policy_check_plaintext(db.policy_lookup(dir, flow));
    let exempt = non_first_fragment
        || matches!(flow.proto, 50 | 51 | 108)
        || (flow.proto == 17
            && (IKE_PORTS.contains(&flow.dport)
                || tables.encap_ports().iter().any(|&(p, _)| p == flow.dport)));
    let local = || if exempt { Ok(()) } else { check(PolicyDir::In) };
    match route {
        InputRoute::Local => local(),
        InputRoute::Forward => check(PolicyDir::Fwd),
        InputRoute::Unroutable => local().and(check(PolicyDir::Fwd)),
    }
}

/// The outbound table of a database: its out policies in order, each id with the
/// database's tag.
pub fn compile_db(db: &XfrmDb) -> Result<Vec<PolicyRule>> {
    let mut rules = compile_sorted(db.policies(PolicyDir::Out))?;
    // The database's tag on each id: see `XfrmDb::policy_by_id`.
    for (i, r) in rules.iter_mut().enumerate() {
        r.policy_id = db.policy_id(i);
    }
    Ok(rules)
}

/// Network-order words of an address, as the XDP program loads them (IPv4 in word 0).
pub fn addr_words(a: IpAddr) -> ([u32; 4], u8) {
    let mut w = [0u32; 4];
    match a {
        IpAddr::V4(v4) => {
            w[0] = u32::from_ne_bytes(v4.octets());
            (w, FAMILY_V4)
        }
        IpAddr::V6(v6) => {
            for (i, c) in v6.octets().chunks_exact(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            (w, FAMILY_V6)
        }
    }
}

/// The prefix length of a rule mask (masks are contiguous: built by `prefix_words`).
fn mask_len(mask: &[u32; 4]) -> u32 {
    mask.iter().map(|m| m.count_ones()).sum()
}

/// Does prefix (addr, mask) of a rule contain the address (or the longer prefix) `a`?
fn covers(addr: &[u32; 4], mask: &[u32; 4], a: &[u32; 4]) -> bool {
    (0..4).all(|w| a[w] & mask[w] == addr[w])
}

fn dim_prefix(r: &PolicyRule, dim: u8) -> (&[u32; 4], &[u32; 4]) {
    if dim == DIM_SRC {
        (&r.src, &r.src_mask)
    } else {
        (&r.dst, &r.dst_mask)
    }
}

fn dim_port(r: &PolicyRule, dim: u8) -> (u16, u16) {
    if dim == DIM_SPORT {
        (r.sport, r.sport_mask)
    } else {
        (r.dport, r.dport_mask)
    }
}

/// The policy index of one table (see xfrm-common, "The policy index"): the entries user
/// space writes beside the rules, slot not yet chosen (the loader sets `slot`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyIndex {
    /// POLICY_PREFIX: (LPM prefix length, key, rules whose prefix covers the key's).
    pub prefixes: Vec<(u32, PrefixKey, RuleBitmap)>,
    /// POLICY_PROTO: (family, protocol, rules of that family with this protocol or 0), the
    /// non-empty ones; every other entry of the slot is empty.
    pub protos: Vec<(u8, u8, RuleBitmap)>,
    /// POLICY_PORT: present for a port field only when some rule names that port exactly.
    pub ports: Vec<(PortKey, RuleBitmap)>,
    /// `TableRef::SPORT_INDEXED` / `DPORT_INDEXED`.
    pub flags: u32,
}

impl PolicyIndex {
    /// The index of `rules` (a table in lookup order). O(rules × distinct prefixes).
    pub fn build(rules: &[PolicyRule]) -> Result<Self> {
        if rules.len() > MAX_POLICIES as usize {
            bail!(
                "{} policies in one direction: the XDP table holds {MAX_POLICIES}",
                rules.len()
            );
        }
        let mut ix = Self::default();
        for dim in [DIM_SRC, DIM_DST] {
            // Distinct (family, prefix) of this field, each with the rules covering it.
            let distinct: BTreeSet<(u8, [u32; 4], [u32; 4])> = rules
                .iter()
                .map(|r| {
                    let (a, m) = dim_prefix(r, dim);
                    (r.family, *a, *m)
                })
                .collect();
            for (family, addr, mask) in distinct {
                let mut b = RuleBitmap::default();
                for (i, r) in rules.iter().enumerate() {
                    let (ra, rm) = dim_prefix(r, dim);
                    // Rule prefix ⊇ this prefix: at most as long, and covers its address.
                    if r.family == family
                        && mask_len(rm) <= mask_len(&mask)
                        && covers(ra, rm, &addr)
                    {
                        b.set(i);
                    }
                }
                let key = PrefixKey {
                    slot: 0,
                    dim,
                    family,
                    _pad: 0,
                    addr,
                };
                ix.prefixes
                    .push((PREFIX_KEY_HEADER_BITS + mask_len(&mask), key, b));
            }
        }
        for family in [FAMILY_V4, FAMILY_V6] {
            for proto in 0..=255u8 {
                let mut b = RuleBitmap::default();
                for (i, r) in rules.iter().enumerate() {
                    if r.family == family && (r.proto == 0 || r.proto == proto) {
                        b.set(i);
                    }
                }
                if !b.is_empty() {
                    ix.protos.push((family, proto, b));
                }
            }
        }
        for (dim, flag) in [
            (DIM_SPORT, TableRef::SPORT_INDEXED),
            (DIM_DPORT, TableRef::DPORT_INDEXED),
        ] {
            let exact: BTreeSet<(u8, u16)> = rules
                .iter()
                .filter(|r| dim_port(r, dim).1 == 0xffff)
                .map(|r| (r.family, dim_port(r, dim).0))
                .collect();
            if exact.is_empty() {
                continue;
            }
            ix.flags |= flag;
            let key = |family, any_other, port| PortKey {
                slot: 0,
                dim,
                family,
                any_other,
                port,
                _pad: 0,
            };
            for (family, port) in exact {
                let mut b = RuleBitmap::default();
                for (i, r) in rules.iter().enumerate() {
                    let (p, m) = dim_port(r, dim);
                    if r.family == family && port & m == p {
                        b.set(i);
                    }
                }
                ix.ports.push((key(family, 0, port), b));
            }
            // Any other port: no exact rule accepts it; wildcards do, partial masks may.
            for family in [FAMILY_V4, FAMILY_V6] {
                let mut b = RuleBitmap::default();
                for (i, r) in rules.iter().enumerate() {
                    if r.family == family && dim_port(r, dim).1 != 0xffff {
                        b.set(i);
                    }
                }
                if !b.is_empty() {
                    ix.ports.push((key(family, 1, 0), b));
                }
            }
        }
        Ok(ix)
    }

    /// What the XDP program computes, in Rust (for tests without a kernel): the position of
    /// the rule that decides, or None.
    pub fn lookup(&self, rules: &[PolicyRule], flow: &FlowKey) -> Option<usize> {
        let (src, family) = addr_words(flow.src);
        let (dst, dst_family) = addr_words(flow.dst);
        if family != dst_family {
            return None;
        }
        // LPM: the longest indexed prefix of this field and family that covers the address.
        let lpm = |dim: u8, a: &[u32; 4]| {
            self.prefixes
                .iter()
                .filter(|(_, k, _)| k.dim == dim && k.family == family)
                .filter(|(len, k, _)| {
                    let mut m = [0u32; 4];
                    let bits = len - PREFIX_KEY_HEADER_BITS;
                    for (w, mw) in m.iter_mut().enumerate() {
                        let b = bits.saturating_sub(32 * w as u32).min(32);
                        *mw = if b == 0 {
                            0
                        } else {
                            u32::from_be(u32::MAX << (32 - b))
                        };
                    }
                    covers(&k.addr, &m, a)
                })
                .max_by_key(|(len, _, _)| *len)
                .map(|(_, _, b)| *b)
        };
        let mut cand = lpm(DIM_DST, &dst)?;
        let s = lpm(DIM_SRC, &src)?;
        let p = self
            .protos
            .iter()
            .find(|(f, pr, _)| *f == family && *pr == flow.proto)
            .map(|(_, _, b)| *b)
            .unwrap_or_default();
        cand = cand.and(&s).and(&p);
        for (dim, flag, port) in [
            (DIM_SPORT, TableRef::SPORT_INDEXED, flow.sport),
            (DIM_DPORT, TableRef::DPORT_INDEXED, flow.dport),
        ] {
            if self.flags & flag == 0 {
                continue;
            }
            let find = |any_other: u8, port: u16| {
                self.ports.iter().find(|(k, _)| {
                    k.dim == dim && k.family == family && k.any_other == any_other && k.port == port
                })
            };
            cand = cand.and(&find(0, port).or_else(|| find(1, 0))?.1);
        }
        (0..rules.len()).find(|&i| cand.contains(i) && rule_matches(&rules[i], &src, &dst, flow))
    }
}

/// The program's `matches` in Rust.
fn rule_matches(r: &PolicyRule, src: &[u32; 4], dst: &[u32; 4], f: &FlowKey) -> bool {
    let (_, family) = addr_words(f.src);
    r.family == family
        && covers(&r.src, &r.src_mask, src)
        && covers(&r.dst, &r.dst_mask, dst)
        && (r.proto == 0 || r.proto == f.proto)
        && f.sport & r.sport_mask == r.sport
        && f.dport & r.dport_mask == r.dport
}

/// The SAS entries of a database: every SA by (daddr, SPI, protocol) → its index, which is
/// what `XfrmDb::state_lookup` finds (all states, as the kernel's xfrm_state_lookup: the
/// packet reached it because its daddr is local).
pub fn compile_sas(db: &XfrmDb) -> Result<Vec<(SaKey, u32)>> {
    let states = db.states();
    if states.len() > MAX_SAS as usize {
        bail!("{} SAs: the XDP table holds {MAX_SAS}", states.len());
    }
    Ok(states.iter().map(|x| sa_entry(x)).collect())
}

/// One SA's entry in the XDP SA map: (daddr, spi, family, proto) → its index.
pub fn sa_entry(x: &crate::xfrm::SecurityAssociation) -> (SaKey, u32) {
    let (daddr, family) = addr_words(x.cfg.id.daddr);
    let key = SaKey {
        daddr,
        spi: x.cfg.id.spi,
        family,
        proto: x.cfg.id.proto.ip_proto(),
        _pad: 0,
    };
    (key, x.index as u32)
}

/// The NAT-T ports of the outside classifier: those of the input path (`InputTables`: the
/// encap destination port of each SA addressed to this host, the first SA naming a port
/// deciding its kind), so that both see the same ports.
pub fn encap_ports(tables: &InputTables) -> Result<[EncapPort; MAX_ENCAP_PORTS]> {
    let ports: Vec<(u16, EncapType)> = tables
        .encap_ports()
        .iter()
        .copied()
        .filter(|&(p, _)| p != 0)
        .collect();
    if ports.len() > MAX_ENCAP_PORTS {
        bail!(
            "{} NAT-T ports ({:?}): the XDP program knows {MAX_ENCAP_PORTS}",
            ports.len(),
            ports.iter().map(|p| p.0).collect::<Vec<_>>()
        );
    }
    let mut out = [EncapPort::default(); MAX_ENCAP_PORTS];
    for (slot, (port, kind)) in out.iter_mut().zip(ports) {
        *slot = EncapPort {
            port,
            kind: match kind {
                EncapType::EspInUdp => ENCAP_ESPINUDP,
                EncapType::EspInUdpNonIke => ENCAP_ESPINUDP_NON_IKE,
            },
            _pad: 0,
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Template;
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
        )
        .unwrap();
        assert_eq!(r.src[0].to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(r.src_mask[0].to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(r.dst[0].to_ne_bytes(), [10, 9, 9, 9]);
        assert_eq!(r.src[1..], [0, 0, 0]);
        assert_eq!(r.src_mask[1..], [0, 0, 0]);
        assert_eq!((r.dport, r.dport_mask, r.sport_mask), (53, 0xffff, 0));
        assert_eq!((r.family, r.proto, r.policy_id), (FAMILY_V4, 17, 7));

        let r = compile_rule(&sel("fd00:1::/33", "::/0", 0, None), RuleAction::Bypass, 0).unwrap();
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
            3
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
        // A policy of another direction cannot enter the out table.
        let inbound = Policy {
            dir: PolicyDir::In,
            ..policy(any, 0, 3, PolicyAction::Block)
        };
        assert!(compile_sorted(&[inbound]).is_err());
    }

    /// Random tables over a small address/port space (so that rules overlap a lot), random
    /// flows: the index model (what the XDP program computes) must find the policy that
    /// `XfrmDb::policy_lookup` finds, for every flow.
    #[test]
    fn index_agrees_with_policy_lookup() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(0x5846_0005);
        let v4 = |rng: &mut StdRng| {
            format!(
                "10.{}.{}.{}",
                rng.gen_range(0..3),
                rng.gen_range(0..2),
                rng.gen_range(0..4)
            )
        };
        let v6 =
            |rng: &mut StdRng| format!("fd00:{:x}::{:x}", rng.gen_range(0..3), rng.gen_range(0..4));
        let mut checked = 0;
        let mut matched = 0;
        for round in 0..40 {
            let n = [1usize, 2, 7, 64, 65, 300, 1024][round % 7];
            let mut ps = Vec::new();
            for i in 0..n {
                let six = rng.gen_bool(0.4);
                let (a, b, max) = if six {
                    (v6(&mut rng), v6(&mut rng), 128)
                } else {
                    (v4(&mut rng), v4(&mut rng), 32)
                };
                let lens = [0u8, 8, 16, 24, 30, max];
                let mut s = sel(
                    &format!("{a}/{}", lens[rng.gen_range(0..lens.len())].min(max)),
                    &format!("{b}/{}", lens[rng.gen_range(0..lens.len())].min(max)),
                    [0u8, 6, 17, 1, 58][rng.gen_range(0..5)],
                    None,
                );
                let port = |rng: &mut StdRng| match rng.gen_range(0..4) {
                    0 => PortMatch::exact(rng.gen_range(0..5)),
                    1 => PortMatch {
                        port: rng.gen_range(0..5),
                        mask: [0xfffe, 0xff00, 0x0001][rng.gen_range(0..3)],
                    },
                    _ => PortMatch::ANY,
                };
                s.sport = port(&mut rng);
                s.dport = port(&mut rng);
                let action = if rng.gen_bool(0.5) {
                    PolicyAction::Allow
                } else {
                    PolicyAction::Block
                };
                ps.push(policy(s, rng.gen_range(0..5), i as u32, action));
            }
            // The db refuses duplicate selectors: drop them as `ip xfrm` would refuse them.
            let mut seen = std::collections::HashSet::new();
            ps.retain(|p| seen.insert(p.selector));
            let db = XfrmDb::new(vec![], ps).unwrap();
            let table = compile_db(&db).unwrap();
            let ix = PolicyIndex::build(&table).unwrap();
            for _ in 0..400 {
                let six = rng.gen_bool(0.4);
                let (src, dst) = if six {
                    (v6(&mut rng), v6(&mut rng))
                } else {
                    (v4(&mut rng), v4(&mut rng))
                };
                let flow = FlowKey {
                    src: src.parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    proto: [6u8, 17, 1, 58, 47][rng.gen_range(0..5)],
                    sport: rng.gen_range(0..6),
                    dport: rng.gen_range(0..6),
                };
                let want = db.policy_lookup(PolicyDir::Out, &flow).map(|p| {
                    db.policies(PolicyDir::Out)
                        .iter()
                        .position(|q| q == p)
                        .unwrap()
                });
                assert_eq!(
                    ix.lookup(&table, &flow),
                    want,
                    "round {round} ({n} rules) {flow:?}"
                );
                checked += 1;
                matched += usize::from(want.is_some_and(|i| i > 0));
            }
        }
        assert_eq!(checked, 40 * 400);
        // Not a test of empty tables: many flows are decided by a rule other than the first.
        assert!(matched > checked / 4, "{matched} of {checked}");
    }

    #[test]
    fn index_entries() {
        let db = XfrmDb::new(
            vec![],
            vec![
                policy(
                    sel("10.1.0.0/16", "10.2.0.0/16", 17, Some(53)),
                    1,
                    0,
                    PolicyAction::Allow,
                ),
                policy(
                    sel("10.1.2.0/24", "10.2.0.0/16", 0, None),
                    2,
                    1,
                    PolicyAction::Block,
                ),
                policy(
                    sel("0.0.0.0/0", "0.0.0.0/0", 6, None),
                    3,
                    2,
                    PolicyAction::Allow,
                ),
            ],
        )
        .unwrap();
        let t = compile_db(&db).unwrap();
        let ix = PolicyIndex::build(&t).unwrap();
        let rules = |b: &RuleBitmap| (0..3).filter(|&i| b.contains(i)).collect::<Vec<_>>();
        let prefix = |dim: u8, addr: &str, len: u32| {
            let (a, fam) = addr_words(addr.parse().unwrap());
            ix.prefixes
                .iter()
                .find(|(l, k, _)| {
                    k.dim == dim
                        && k.family == fam
                        && k.addr == a
                        && *l == PREFIX_KEY_HEADER_BITS + len
                })
                .map(|(_, _, b)| rules(b))
        };
        // 10.1.2.0/24 is covered by itself, by 10.1.0.0/16 and by 0/0.
        assert_eq!(prefix(DIM_SRC, "10.1.2.0", 24), Some(vec![0, 1, 2]));
        assert_eq!(prefix(DIM_SRC, "10.1.0.0", 16), Some(vec![0, 2]));
        assert_eq!(prefix(DIM_SRC, "0.0.0.0", 0), Some(vec![2]));
        assert_eq!(prefix(DIM_DST, "10.2.0.0", 16), Some(vec![0, 1, 2]));
        assert_eq!(ix.prefixes.len(), 3 + 2);
        // UDP: rules 0 (udp) and 1 (any); TCP: 1 and 2; nothing for IPv6.
        let proto = |p: u8| {
            ix.protos
                .iter()
                .find(|(f, q, _)| *f == FAMILY_V4 && *q == p)
                .map(|(_, _, b)| rules(b))
        };
        assert_eq!(proto(17), Some(vec![0, 1]));
        assert_eq!(proto(6), Some(vec![1, 2]));
        assert!(ix.protos.iter().all(|(f, _, _)| *f == FAMILY_V4));
        // Only dport is named exactly: port 53 → rule 0 and the wildcards; other ports → the
        // wildcards.
        assert_eq!(ix.flags, TableRef::DPORT_INDEXED);
        let port = |any_other: u8, p: u16| {
            ix.ports
                .iter()
                .find(|(k, _)| k.dim == DIM_DPORT && k.any_other == any_other && k.port == p)
                .map(|(_, b)| rules(b))
        };
        assert_eq!(port(0, 53), Some(vec![0, 1, 2]));
        assert_eq!(port(1, 0), Some(vec![1, 2]));
        // Summaries follow the words.
        assert!(ix.prefixes.iter().all(|(_, _, b)| b.summary == 1));
    }

    #[test]
    fn inbound_tables_and_plaintext_check() {
        use crate::policy::TmplLevel;
        use crate::sa::{XfrmMode, XfrmProto};
        let tmpl = |level| Template {
            src: None,
            dst: "192.0.2.1".parse().unwrap(),
            proto: XfrmProto::Esp,
            spi: None,
            reqid: 1,
            mode: XfrmMode::Tunnel,
            level,
        };
        let with = |mut p: Policy, dir, templates| {
            p.dir = dir;
            p.templates = templates;
            p
        };
        let lan = sel("10.1.0.0/16", "10.2.0.0/16", 0, None);
        let ps = vec![
            // in: UDP 53 blocked before the catch-all that wants ESP.
            with(
                policy(
                    sel("10.1.0.0/16", "10.2.0.0/16", 17, Some(53)),
                    1,
                    0,
                    PolicyAction::Block,
                ),
                PolicyDir::In,
                vec![],
            ),
            with(
                policy(lan, 2, 1, PolicyAction::Allow),
                PolicyDir::In,
                vec![tmpl(TmplLevel::Required)],
            ),
            // fwd: only an optional template: clear text is acceptable.
            with(
                policy(lan, 2, 2, PolicyAction::Allow),
                PolicyDir::Fwd,
                vec![tmpl(TmplLevel::Use)],
            ),
            with(
                policy(
                    sel("10.1.0.0/16", "10.3.0.0/16", 0, None),
                    2,
                    3,
                    PolicyAction::Allow,
                ),
                PolicyDir::Fwd,
                vec![tmpl(TmplLevel::Use), tmpl(TmplLevel::Required)],
            ),
        ];
        let db = XfrmDb::new(vec![], ps).unwrap();
        let inp = compile_inbound(&db, PolicyDir::In).unwrap();
        let fwd = compile_inbound(&db, PolicyDir::Fwd).unwrap();
        assert!(compile_inbound(&db, PolicyDir::Out).is_err());
        let actions = |t: &[PolicyRule]| t.iter().map(|r| r.action).collect::<Vec<_>>();
        assert_eq!(
            actions(&inp),
            [RuleAction::Block as u8, RuleAction::Protect as u8]
        );
        assert_eq!(
            actions(&fwd),
            [RuleAction::Bypass as u8, RuleAction::Protect as u8]
        );
        assert_eq!(inp.iter().map(|r| r.policy_id).collect::<Vec<_>>(), [0, 1]);

        let tables = InputTables::new(&db);
        let flow = |dst: &str, proto, dport| FlowKey {
            src: "10.1.0.5".parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            sport: 1000,
            dport,
        };
        let check = |f: &FlowKey, frag, route| plaintext_check(&db, &tables, f, frag, route);
        use InputRoute::*;
        let mm = Err(XfrmStat::XfrmInTmplMismatch);
        let tcp = flow("10.2.0.1", 6, 22);
        assert_eq!(check(&tcp, false, Local), mm);
        assert_eq!(check(&tcp, false, Forward), Ok(()));
        assert_eq!(check(&tcp, false, Unroutable), mm);
        assert_eq!(
            check(&flow("10.2.0.1", 17, 53), false, Local),
            Err(XfrmStat::XfrmInPolBlock)
        );
        assert_eq!(check(&flow("10.3.0.1", 6, 22), false, Forward), mm);
        assert_eq!(check(&flow("10.3.0.1", 6, 22), false, Local), Ok(()));
        // What local delivery never checks in clear: IKE, ESP, non-first fragments.
        assert_eq!(check(&flow("10.2.0.1", 17, 500), false, Local), Ok(()));
        assert_eq!(check(&flow("10.2.0.1", 17, 4500), false, Local), Ok(()));
        assert_eq!(check(&flow("10.2.0.1", 50, 0), false, Local), Ok(()));
        assert_eq!(check(&flow("10.2.0.1", 6, 0), true, Local), Ok(()));
        // Forwarding checks them all.
        assert_eq!(check(&flow("10.3.0.1", 17, 500), false, Forward), mm);
        assert_eq!(check(&flow("10.3.0.1", 6, 0), true, Forward), mm);
    }

    #[test]
    fn sas_and_nat_t_ports() {
        use crate::sa::{AuthAlgo, Encap, XfrmMode};
        use crate::xfrm::state::tests::{ah_cfg, esp_cfg};
        let mut a = esp_cfg(0x100, "10.0.0.2", "10.0.0.1", XfrmMode::Tunnel);
        a.encap = Some(Encap {
            kind: EncapType::EspInUdp,
            sport: 4500,
            dport: 4500,
            oaddr: "0.0.0.0".parse().unwrap(),
        });
        let mut b = esp_cfg(0x200, "fd00::2", "fd00::1", XfrmMode::Tunnel);
        b.encap = Some(Encap {
            kind: EncapType::EspInUdpNonIke,
            sport: 4500,
            dport: 4501,
            oaddr: "::".parse().unwrap(),
        });
        let c = ah_cfg(
            0x300,
            "10.0.0.1",
            "10.0.0.2",
            XfrmMode::Transport,
            AuthAlgo::HmacSha256,
        );
        let db = XfrmDb::new(vec![a, b, c], vec![]).unwrap();
        let sas = compile_sas(&db).unwrap();
        assert_eq!(sas.len(), 3);
        let (k, id) = sas[1];
        assert_eq!((k.spi, k.family, k.proto, id), (0x200, FAMILY_V6, 50, 1));
        assert_eq!(k.daddr, addr_words("fd00::1".parse().unwrap()).0);
        assert_eq!(
            (sas[2].0.proto, sas[2].0.family, sas[2].1),
            (51, FAMILY_V4, 2)
        );
        // No local address named: every SA's encap port counts, first kind wins.
        let ports = encap_ports(&InputTables::new(&db)).unwrap();
        assert_eq!(
            ports[..2]
                .iter()
                .map(|e| (e.port, e.kind))
                .collect::<Vec<_>>(),
            [(4500, ENCAP_ESPINUDP), (4501, ENCAP_ESPINUDP_NON_IKE)]
        );
        assert_eq!(ports[2].port, 0);
    }
}
