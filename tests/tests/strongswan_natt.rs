//! NAT-T through a real NAT: the wire router masquerades what gw-a sends towards gw-b
//! (nftables, source NAT to its own address on gw-b's side), so gw-b sees gw-a as 10.3.0.1.
//! charon detects the NAT in IKE_SA_INIT and floats IKE to UDP 4500; the CHILD_SA's SAs get
//! UDP encapsulation, and both datapaths send and take ESP in UDP 4500 themselves (charon's
//! UDP socket gets IKE and keepalives only).
//!
//! Checked: pings and a TCP transfer each way arrive whole (SHA-256 compared); the capture
//! on gw-b's side of the NAT sees the hosts' traffic as ESP-in-UDP from the NAT's address
//! only, no bare ESP and nothing in clear.

use anyhow::{bail, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    scenario::{ping_both_ways, transfer_size, transfers_both_ways, wire_capture_at},
    strongswan::{
        check_list_sas, check_only_ipsec, check_spis_on_wire, run_test, with_sites, SiteConf,
    },
};

fn case() -> Case {
    Case::new("strongswan-natt", Endpoints::Hosts, Family::V4, Family::V4).sa(SaSpec::new(
        Mode::Tunnel,
        GCM128,
    )
    .natt(4500))
}

#[test]
fn strongswan_natt_masquerade() {
    run_test("strongswan_natt_masquerade", natt_masquerade);
}

/// Source NAT in `wire`: what leaves towards gw-b from gw-a's network gets the router's
/// address on that link.
fn masquerade(net: &GatewayNet) -> Result<String> {
    let w = net.topo.ns(net.wire);
    let out = &net.wire_port(Side::B).ifname;
    let from = Family::V4.subnet(net.outside(Side::A));
    w.exec("nft", &["add", "table", "ip", "nat"])?;
    w.exec(
        "nft",
        &[
            "add",
            "chain",
            "ip",
            "nat",
            "post",
            "{ type nat hook postrouting priority 100 ; }",
        ],
    )?;
    w.exec(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "nat",
            "post",
            "oifname",
            out,
            "ip",
            "saddr",
            &from,
            "masquerade",
        ],
    )?;
    Ok(Family::V4.addr(net.wire_port(Side::B)).to_string())
}

fn natt_masquerade() -> Result<String> {
    let case = case();
    let net = GatewayNet::new(NetOpts::default())?;
    let nat = masquerade(&net)?;
    // gw-b's side of the NAT: what gw-b sends and gets.
    let cap = wire_capture_at(&net, &case, Side::B)?;
    let (summary, rep) = with_sites(&case, cap, |sites| {
        sites.start(&net, &case, Side::A, "charon-natt", &SiteConf::psk(), None)?;
        // gw-b answers whoever comes: it sees gw-a at the NAT's address.
        let b = SiteConf::psk().remote_any();
        sites.start(&net, &case, Side::B, "charon-natt", &b, None)?;
        let up = sites.initiate_and_wait(&net, &case)?;
        let (la, lb) = (sites.charon(Side::A).log(), sites.charon(Side::B).log());
        if !la.contains("local host is behind NAT") || !lb.contains("remote host is behind NAT") {
            bail!("the charons did not detect the NAT");
        }
        let pings = ping_both_ways(&net, &case, 3)?;
        let [ra, rb] = transfers_both_ways(&net, &case, transfer_size(16), 6100)?;
        let spis = [
            check_list_sas(sites, Side::A, "ESP:AES_GCM_16-128")?,
            check_list_sas(sites, Side::B, "ESP:AES_GCM_16-128")?,
        ];
        // gw-b's outbound SA goes to the NAT, in UDP.
        let states = sites.gw(Side::B).xfrm_ok(&["state", "list"], "")?;
        if !states.contains(&format!("dst {nat}")) || !states.contains("encap type espinudp") {
            bail!("gw-b's SAs are not UDP-encapsulated towards the NAT {nat}:\n{states}");
        }
        Ok((
            spis,
            format!("up {up:.1?} through the NAT ({nat}); {pings}A->B {ra}; B->A {rb}"),
        ))
    })?;
    check_only_ipsec(&rep)?;
    check_spis_on_wire(&rep, &summary.0)?;
    // Every IPsec frame kept as a sample is UDP from or to the NAT's address: no bare ESP.
    for f in &rep.samples {
        let Some((off, src, dst, _)) = xfrm_tests::capture::parse(&f.data, &[4500]) else {
            continue;
        };
        if f.data.get(off + 9) != Some(&17) || ![src, dst].contains(&nat.parse()?) {
            bail!(
                "an IPsec frame not in UDP via the NAT: {}",
                xfrm_tests::capture::describe(&f.data, None)
            );
        }
    }
    Ok(format!(
        "{}\nwire (gw-b's side of the NAT): {}",
        summary.1,
        rep.summary()
    ))
}
