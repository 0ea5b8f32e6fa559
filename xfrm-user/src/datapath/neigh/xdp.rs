//! XDP attach over rtnetlink (IFLA_XDP): which programs an interface runs, and the netlink-mode
//! attach that outlives the daemon (fail closed).

use anyhow::Result;

use netlink_packet_core::Parseable;
use netlink_packet_route::link::{LinkHeader, LinkXdp};

use super::netlink::*;

/// An XDP program attached to an interface, per IFLA_XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpProg {
    pub id: u32,
    pub mode: XdpAttachMode,
}

/// Where an XDP program runs (XDP_ATTACHED_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// Generic XDP (XDP_FLAGS_SKB_MODE).
    Skb,
    /// In the driver (XDP_FLAGS_DRV_MODE).
    Drv,
    /// Offloaded to the NIC.
    Hw,
}

pub(super) fn parse_link_xdp(body: &[u8]) -> Option<(u32, Vec<XdpProg>)> {
    let header = LinkHeader::parse(body).ok()?;
    let mut progs = Vec::new();
    // IFLA_XDP by hand (the crate drops the whole nest for one bad entry), each entry
    // through the crate.
    let nests = attributes(body.get(16..)?, |n| {
        (n.kind() & !NLA_F_NESTED == IFLA_XDP).then(|| n.value().to_vec())
    });
    for nest in nests {
        for x in attributes(&nest, |n| LinkXdp::parse(n).ok()) {
            let (id, mode) = match x {
                LinkXdp::SkbProgId(id) => (id, XdpAttachMode::Skb),
                LinkXdp::DrvProgId(id) => (id, XdpAttachMode::Drv),
                LinkXdp::HwProgId(id) => (id, XdpAttachMode::Hw),
                _ => continue,
            };
            if id != 0 {
                progs.push(XdpProg { id, mode });
            }
        }
    }
    Some((header.index, progs))
}

impl Rtnl {
    /// The XDP programs on the interface named `name` (its index, then one entry per mode
    /// with a program: rtnl_xdp_fill reports each mode's program id).
    pub fn xdp_programs(&mut self, name: &str) -> Result<(u32, Vec<XdpProg>)> {
        self.get_link(0, Some(name), parse_link_xdp)
    }

    /// `ip link set dev IFINDEX xdp fd FD` (netlink mode, no bpf_link): RTM_SETLINK with
    /// IFLA_XDP { FD, FLAGS, EXPECTED_FD }. `fd` -1 detaches. Without XDP_FLAGS_REPLACE the
    /// kernel swaps whatever netlink-attached program is there for `fd` in one pointer store
    /// (dev_xdp_install); with it, only if the attached program is `expected`'s (else
    /// EEXIST). A program attached through a bpf_link refuses both (EBUSY).
    pub fn set_xdp(
        &mut self,
        ifindex: u32,
        fd: i32,
        flags: u32,
        expected: Option<i32>,
    ) -> Result<()> {
        let mut fixed = [0u8; 16];
        fixed[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let mut nested = nla(IFLA_XDP_FD, &fd.to_ne_bytes());
        nested.extend(nla(IFLA_XDP_FLAGS, &flags.to_ne_bytes()));
        if let Some(e) = expected {
            nested.extend(nla(IFLA_XDP_EXPECTED_FD, &e.to_ne_bytes()));
        }
        let m = Msg::new(RTM_SETLINK, NLM_F_ACK, &fixed).attr(IFLA_XDP | NLA_F_NESTED, &nested);
        self.sock
            .request(m, false)
            .map(|_| ())
            .map_err(anyhow::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_xdp_parse() {
        let nested = Msg::new(0, 0, &[])
            .attr(2, &[4u8]) // IFLA_XDP_ATTACHED: MULTI
            .attr(IFLA_XDP_SKB_PROG_ID, &11u32.to_ne_bytes())
            .attr(IFLA_XDP_DRV_PROG_ID, &12u32.to_ne_bytes())
            .attr(IFLA_XDP_HW_PROG_ID, &[1, 2]) // malformed: skipped
            .buf;
        let mut fixed = [0u8; 16];
        fixed[4..8].copy_from_slice(&9i32.to_ne_bytes());
        let b = Msg::new(RTM_NEWLINK, 0, &fixed)
            .attr(IFLA_MTU, &1500u32.to_ne_bytes())
            .attr(IFLA_XDP | NLA_F_NESTED, &nested[NLMSG_HDRLEN..])
            .finish(1);
        let (_, _, body) = messages(&b).next().unwrap();
        let (index, progs) = parse_link_xdp(body).unwrap();
        assert_eq!(index, 9);
        assert_eq!(
            progs,
            vec![
                XdpProg {
                    id: 11,
                    mode: XdpAttachMode::Skb
                },
                XdpProg {
                    id: 12,
                    mode: XdpAttachMode::Drv
                }
            ]
        );
        // No IFLA_XDP at all (or an empty one): nothing attached.
        let b = Msg::new(RTM_NEWLINK, 0, &fixed).finish(2);
        let (_, _, body) = messages(&b).next().unwrap();
        assert_eq!(parse_link_xdp(body), Some((9, vec![])));
        assert_eq!(parse_link_xdp(&body[..8]), None);
    }
}
