//! The policy lookup of one direction without a scan of the table: the kernel's bydst
//! hash in the form a static table allows.
//!
//! Policies are grouped by the shape of their addresses (family and prefix length of src
//! and dst); within a shape, by the pair of masked addresses. A flow meets one hash lookup
//! per shape (a site-to-site table of /24s is one shape) and then only the policies of its
//! bucket, so 1 024 policies cost what one does. The answer is the first policy in lookup
//! order whose selector matches, as the scan's: every policy that can match the flow sits
//! in the bucket its shape gives the flow, and each bucket keeps lookup order.

use std::{collections::HashMap, net::IpAddr};

use crate::{
    policy::Policy,
    selector::{FlowKey, Prefix},
};

/// Tables of at most this many policies are scanned: a few selector matches cost less than
/// hashing two addresses.
const SCAN_MAX: usize = 4;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Family and length of one address field of a selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Field {
    v4: bool,
    len: u8,
}

impl Field {
    fn of(p: &Prefix) -> Self {
        let max = if p.addr.is_ipv4() { 32 } else { 128 };
        Self {
            v4: p.addr.is_ipv4(),
            len: p.len.min(max),
        }
    }

    /// `a` masked to this field's length, or None if of the other family (no selector of
    /// this shape can match it: `Prefix::contains`).
    fn mask(self, a: IpAddr) -> Option<u128> {
        let (bits, width) = match a {
            IpAddr::V4(v4) if self.v4 => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) if !self.v4 => (u128::from(v6), 128),
            _ => return None,
        };
        let all = u128::MAX >> (128 - width);
        let host = all.checked_shr(u32::from(self.len)).unwrap_or(0);
        Some(bits & all & !host)
    }
}

#[derive(Clone, Debug)]
struct Shape {
    src: Field,
    dst: Field,
    /// (masked src, masked dst) → positions in lookup order.
    buckets: FastMap<(u128, u128), Vec<u32>>,
}

/// The index of one direction's policies (positions into that list, in lookup order).
#[derive(Clone, Debug, Default)]
pub struct PolicyIndex {
    shapes: Vec<Shape>,
}

impl PolicyIndex {
    /// The index of `list` (already in lookup order).
    pub fn build(list: &[Policy]) -> Self {
        let mut ix = Self::default();
        if list.len() <= SCAN_MAX {
            return ix;
        }
        for (pos, p) in list.iter().enumerate() {
            let (src, dst) = (Field::of(&p.selector.src), Field::of(&p.selector.dst));
            let key = (
                src.mask(p.selector.src.addr).unwrap_or_default(),
                dst.mask(p.selector.dst.addr).unwrap_or_default(),
            );
            let at = match ix.shapes.iter().position(|s| s.src == src && s.dst == dst) {
                Some(i) => i,
                None => {
                    ix.shapes.push(Shape {
                        src,
                        dst,
                        buckets: FastMap::default(),
                    });
                    ix.shapes.len() - 1
                }
            };
            ix.shapes[at]
                .buckets
                .entry(key)
                .or_default()
                .push(pos as u32);
        }
        ix
    }

    /// xfrm_policy_lookup over `list` (the list this index was built from): the first
    /// policy whose selector matches the flow.
    pub fn lookup<'a>(&self, list: &'a [Policy], flow: &FlowKey) -> Option<&'a Policy> {
        if list.len() <= SCAN_MAX {
            return list.iter().find(|p| p.selector.matches(flow));
        }
        let mut best = u32::MAX;
        for s in &self.shapes {
            let (Some(a), Some(b)) = (s.src.mask(flow.src), s.dst.mask(flow.dst)) else {
                continue;
            };
            let Some(bucket) = s.buckets.get(&(a, b)) else {
                continue;
            };
            for &pos in bucket {
                if pos >= best {
                    break;
                }
                if list[pos as usize].selector.matches(flow) {
                    best = pos;
                    break;
                }
            }
        }
        list.get(best as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::{PolicyAction, PolicyDir},
        selector::{PortMatch, Selector},
    };

    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn policy(index: u32, src: Prefix, dst: Prefix, proto: u8, dport: PortMatch) -> Policy {
        Policy {
            selector: Selector {
                src,
                dst,
                proto,
                sport: PortMatch::ANY,
                dport,
            },
            dir: PolicyDir::Fwd,
            priority: 0,
            action: PolicyAction::Allow,
            templates: Vec::new(),
            index,
        }
    }

    /// An address from a small space (so that prefixes overlap and flows hit them), v4 or
    /// v6 by `r`.
    fn addr(r: u64) -> IpAddr {
        if r & 7 == 0 {
            format!("fd00:{:x}::{:x}", (r >> 8) & 3, (r >> 16) & 3)
                .parse()
                .unwrap()
        } else {
            format!("10.{}.{}.{}", (r >> 8) & 3, (r >> 16) & 3, (r >> 24) & 3)
                .parse()
                .unwrap()
        }
    }

    fn prefix(r: u64) -> Prefix {
        let a = addr(r);
        let lens: &[u8] = if a.is_ipv4() {
            &[0, 8, 16, 24, 30, 32, 40]
        } else {
            &[0, 32, 64, 128]
        };
        Prefix {
            addr: a,
            len: lens[((r >> 32) as usize) % lens.len()],
        }
    }

    #[test]
    fn masks() {
        let f = |v4, len| Field { v4, len };
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(f(true, 24).mask(a), Some(0x0a01_0200));
        assert_eq!(f(true, 32).mask(a), Some(0x0a01_0203));
        assert_eq!(f(true, 0).mask(a), Some(0));
        assert_eq!(f(false, 64).mask(a), None);
        let b: IpAddr = "fd00:1:2:3:4::5".parse().unwrap();
        assert_eq!(
            f(false, 64).mask(b),
            Some(u128::from(
                "fd00:1:2:3::".parse::<std::net::Ipv6Addr>().unwrap()
            ))
        );
        assert_eq!(
            f(false, 128).mask(b),
            Some(u128::from_be_bytes(match b {
                IpAddr::V6(v) => v.octets(),
                _ => unreachable!(),
            }))
        );
    }

    /// Random tables (overlapping prefixes of every length, both families, protocols and
    /// ports) and random flows: the index finds what the scan finds.
    #[test]
    fn agrees_with_the_scan() {
        let mut seed = 1u64;
        let mut next = || {
            seed = mix(seed);
            seed
        };
        for round in 0..200 {
            let n = 1 + (next() % 40) as usize;
            let list: Vec<Policy> = (0..n)
                .map(|i| {
                    let dport = if next() % 3 == 0 {
                        PortMatch {
                            port: (next() % 3) as u16,
                            mask: 0xffff,
                        }
                    } else {
                        PortMatch::ANY
                    };
                    let proto = [0u8, 6, 17][(next() % 3) as usize];
                    policy(i as u32, prefix(next()), prefix(next()), proto, dport)
                })
                .collect();
            let ix = PolicyIndex::build(&list);
            for _ in 0..200 {
                let src = addr(next());
                let dst = if next() % 2 == 0 {
                    addr(next())
                } else {
                    // Same family as src mostly, as packets are.
                    let d = addr(next());
                    if d.is_ipv4() == src.is_ipv4() {
                        d
                    } else {
                        src
                    }
                };
                let flow = FlowKey {
                    src,
                    dst,
                    proto: [6u8, 17][(next() % 2) as usize],
                    sport: 0,
                    dport: (next() % 3) as u16,
                };
                let want = list
                    .iter()
                    .find(|p| p.selector.matches(&flow))
                    .map(|p| p.index);
                let got = ix.lookup(&list, &flow).map(|p| p.index);
                assert_eq!(got, want, "round {round}, {flow:?}");
            }
        }
    }
}
