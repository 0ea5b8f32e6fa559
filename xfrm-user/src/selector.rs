//! Traffic selectors (struct xfrm_selector): the part of a policy or SA that says which
//! packets it covers.

use std::net::IpAddr;

/// An address prefix; `len` 0 matches every address of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, len }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len.min(32)))
                };
                (u32::from(p) & mask) == (u32::from(a) & mask)
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len.min(128)))
                };
                (u128::from(p) & mask) == (u128::from(a) & mask)
            }
            _ => false,
        }
    }
}

/// A port (or, for ICMP, type/code as Linux stores them in sport/dport) with a mask;
/// mask 0 = any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PortMatch {
    pub port: u16,
    pub mask: u16,
}

impl PortMatch {
    pub const ANY: PortMatch = PortMatch { port: 0, mask: 0 };
    pub fn exact(port: u16) -> Self {
        Self { port, mask: 0xffff }
    }
    pub fn matches(&self, port: u16) -> bool {
        (port & self.mask) == (self.port & self.mask)
    }
}

/// struct xfrm_selector. `proto` 0 = any upper protocol. `family` None = either (an SA whose
/// selector was not given).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    pub src: Prefix,
    pub dst: Prefix,
    pub proto: u8,
    pub sport: PortMatch,
    pub dport: PortMatch,
}

/// What a classifier extracts from a packet to match selectors against (struct flowi).
/// For ICMP/ICMPv6, `sport` is the type and `dport` the code, as in Linux's flowi.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Selector {
    /// A selector that matches every packet of the family of `like`.
    pub fn any_of_family(like: IpAddr) -> Self {
        let unspecified = match like {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let p = Prefix {
            addr: unspecified,
            len: 0,
        };
        Self {
            src: p,
            dst: p,
            proto: 0,
            sport: PortMatch::ANY,
            dport: PortMatch::ANY,
        }
    }

    /// xfrm_selector_match: family, prefixes, protocol, ports (ports only compared when the
    /// selector names a protocol, as a mask of 0 matches anything anyway).
    pub fn matches(&self, flow: &FlowKey) -> bool {
        self.src.contains(flow.src)
            && self.dst.contains(flow.dst)
            && (self.proto == 0 || self.proto == flow.proto)
            && self.sport.matches(flow.sport)
            && self.dport.matches(flow.dport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_ports() {
        let p = Prefix {
            addr: "10.1.0.0".parse().unwrap(),
            len: 24,
        };
        assert!(p.contains("10.1.0.77".parse().unwrap()));
        assert!(!p.contains("10.1.1.1".parse().unwrap()));
        assert!(!p.contains("fd00::1".parse().unwrap()));
        let any6 = Prefix {
            addr: "::".parse().unwrap(),
            len: 0,
        };
        assert!(any6.contains("fd00::1".parse().unwrap()));
        assert!(!any6.contains("10.0.0.1".parse().unwrap()));
        let sel = Selector {
            src: p,
            dst: Prefix {
                addr: "10.2.0.0".parse().unwrap(),
                len: 16,
            },
            proto: 6,
            sport: PortMatch::ANY,
            dport: PortMatch::exact(80),
        };
        let mut flow = FlowKey {
            src: "10.1.0.5".parse().unwrap(),
            dst: "10.2.3.4".parse().unwrap(),
            proto: 6,
            sport: 1234,
            dport: 80,
        };
        assert!(sel.matches(&flow));
        flow.dport = 81;
        assert!(!sel.matches(&flow));
    }
}
