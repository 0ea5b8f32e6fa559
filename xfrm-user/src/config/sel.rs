//! The selector words (ip's xfrm_selector_parse and xfrm_selector_upspec_parse), shared by
//! `policy add` and the `sel` of `state add`.

use std::net::IpAddr;

use super::cursor::{set_once, At, Cursor};
use super::error::{LineError, LineResult};
use super::lexer::Word;
use super::value::{family_name, number, port_of, prefix_of, unspecified_like, upper_proto_of};
use crate::selector::{PortMatch, Prefix, Selector};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_MH: u8 = 135;

/// The selector words seen so far.
#[derive(Default)]
pub(crate) struct SelParts<'w> {
    pub src: At<'w, Prefix>,
    pub dst: At<'w, Prefix>,
    pub proto: At<'w, u8>,
    pub sport: At<'w, u16>,
    pub dport: At<'w, u16>,
    pub icmp_type: At<'w, u8>,
    pub icmp_code: At<'w, u8>,
}

impl<'w> SelParts<'w> {
    /// Parses the selector keyword `kw` (already taken from `cur`) and its value; `Ok(false)`
    /// when `kw` is not a selector word.
    pub fn take(&mut self, kw: &'w Word, cur: &mut Cursor<'w>) -> LineResult<bool> {
        match kw.text.as_str() {
            "src" | "dst" => {
                let val = cur.value(kw, "an address or prefix")?;
                let p = prefix_of(val)?;
                let slot = if kw.is("src") {
                    &mut self.src
                } else {
                    &mut self.dst
                };
                set_once(slot, kw, val, p)?;
            }
            "proto" => {
                let val = cur.value(kw, "a protocol")?;
                set_once(&mut self.proto, kw, val, upper_proto_of(val)?)?;
            }
            "sport" | "dport" => {
                let val = cur.value(kw, "a port number")?;
                let slot = if kw.is("sport") {
                    &mut self.sport
                } else {
                    &mut self.dport
                };
                set_once(slot, kw, val, port_of(val)?)?;
            }
            "type" | "code" => {
                let val = cur.value(kw, "a number from 0 to 255")?;
                let n = number(&val.text, 255).map_err(|_| {
                    LineError::at(val, format!("expected an ICMP {} from 0 to 255", kw.text))
                })? as u8;
                let slot = if kw.is("type") {
                    &mut self.icmp_type
                } else {
                    &mut self.icmp_code
                };
                set_once(slot, kw, val, n)?;
            }
            "dev" => {
                return Err(LineError::at(
                    kw,
                    "'dev' (a selector bound to an interface) is not supported by xfrm-ebpf",
                ))
            }
            "key" => {
                return Err(LineError::at(
                    kw,
                    "'key' (a GRE key selector) is not supported by xfrm-ebpf",
                ))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub fn is_empty(&self) -> bool {
        self.src.is_none()
            && self.dst.is_none()
            && self.proto.is_none()
            && self.sport.is_none()
            && self.dport.is_none()
            && self.icmp_type.is_none()
            && self.icmp_code.is_none()
    }

    /// The family the addresses give, if any.
    pub fn family_like(&self) -> Option<IpAddr> {
        self.src.or(self.dst).map(|s| s.v.addr)
    }

    /// struct xfrm_selector from the words; a missing address is the "any" prefix of the
    /// family of the other one, or of `default_like` when neither is given.
    pub fn build(&self, default_like: IpAddr) -> LineResult<Selector> {
        if let (Some(s), Some(d)) = (self.src, self.dst) {
            if s.v.addr.is_ipv4() != d.v.addr.is_ipv4() {
                return Err(LineError::at(
                    d.val,
                    format!(
                        "expected a dst of the same family as src {} ({})",
                        s.val.text,
                        family_name(s.v.addr)
                    ),
                ));
            }
        }
        let like = self.family_like().unwrap_or(default_like);
        let any = Prefix {
            addr: unspecified_like(like),
            len: 0,
        };
        let proto = self.proto.map_or(0, |p| p.v);
        // ip's xfrm_selector_upspec_parse: ports only with a port protocol, type/code only
        // with ICMP, ICMPv6 or MH (where Linux keeps them in sport/dport).
        for p in [self.sport, self.dport].into_iter().flatten() {
            if !matches!(
                proto,
                IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_DCCP
            ) {
                return Err(LineError::at(
                    p.kw,
                    format!(
                        "expected proto tcp, udp, sctp or dccp before '{}' (ports need a port protocol, as in ip)",
                        p.kw.text
                    ),
                ));
            }
        }
        for p in [self.icmp_type, self.icmp_code].into_iter().flatten() {
            if !matches!(proto, IPPROTO_ICMP | IPPROTO_ICMPV6 | IPPROTO_MH) {
                return Err(LineError::at(
                    p.kw,
                    format!(
                        "expected proto icmp, ipv6-icmp or mh before '{}' (as in ip)",
                        p.kw.text
                    ),
                ));
            }
        }
        // ip: port 0 is "any" (no mask); type and code always set the mask.
        let port = |p: At<'w, u16>| match p {
            Some(s) if s.v != 0 => PortMatch::exact(s.v),
            _ => PortMatch::ANY,
        };
        let icmp = |p: At<'w, u8>| p.map_or(PortMatch::ANY, |s| PortMatch::exact(u16::from(s.v)));
        let (sport, dport) = if self.icmp_type.is_some() || self.icmp_code.is_some() {
            (icmp(self.icmp_type), icmp(self.icmp_code))
        } else {
            (port(self.sport), port(self.dport))
        };
        Ok(Selector {
            src: self.src.map_or(any, |s| s.v),
            dst: self.dst.map_or(any, |s| s.v),
            proto,
            sport,
            dport,
        })
    }
}

/// A selector with every address masked to its prefix, so two spellings of one set of
/// packets (`10.1.0.5/24`, `10.1.0.0/24`) compare equal.
pub(crate) fn normalized(s: &Selector) -> Selector {
    let mask = |p: Prefix| Prefix {
        addr: match p.addr {
            IpAddr::V4(a) => {
                let m = if p.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(p.len.min(32)))
                };
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = if p.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(p.len.min(128)))
                };
                IpAddr::V6((u128::from(a) & m).into())
            }
        },
        len: p.len,
    };
    Selector {
        src: mask(s.src),
        dst: mask(s.dst),
        ..*s
    }
}
