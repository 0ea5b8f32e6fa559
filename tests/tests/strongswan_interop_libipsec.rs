//! Interop with an ESP we did not write: gw-a runs our datapath driven by charon through
//! kernel-xfrmuser; gw-b runs stock charon with strongSwan's own userspace ESP
//! (kernel-libipsec, Debian's plugin, on a TUN device). kernel-libipsec receives ESP only
//! in UDP, so gw-b asks for encapsulation (`encap = yes`) and both ends send ESP in UDP
//! 4500. Pings and a TCP transfer each way arrive whole, then a rekey from each side and
//! the same again; nothing in clear on the wire.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    scenario::{ping_both_ways, transfers_both_ways, wait_path, wire_capture},
    strongswan::{run_test, swanctl_conf, wait_for, with_sites, Charon, Kernel, SiteConf},
};

fn case() -> Case {
    Case::new(
        "strongswan-libipsec",
        Endpoints::Hosts,
        Family::V4,
        Family::V4,
    )
    .sa(SaSpec::new(Mode::Tunnel, GCM128).natt(4500))
}

#[test]
fn strongswan_interop_libipsec() {
    run_test("strongswan_interop_libipsec", interop_libipsec);
}

fn interop_libipsec() -> Result<String> {
    let case = case();
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let (summary, rep) = with_sites(&case, cap, |sites| {
        sites.start(
            &net,
            &case,
            Side::A,
            "charon-interop",
            &SiteConf::psk(),
            None,
        )?;
        // charon-libipsec sends ESP in UDP from a kernel socket: with veth's TX checksum
        // offload the UDP checksum would stay partial on the wire, where a NIC would have
        // completed it (and our datapath checks it, as udp_rcv does).
        net.topo.ns(net.gw(Side::B)).exec(
            "ethtool",
            &["-K", &net.outside(Side::B).ifname, "tx", "off"],
        )?;
        let b = Charon::start(
            net.topo.ns(net.gw(Side::B)),
            "charon-interop-b-libipsec",
            Kernel::Libipsec,
            "",
        )?;
        // kernel-libipsec receives ESP only in UDP.
        let conf = SiteConf::psk().conn("encap = yes");
        let r = b.load(&swanctl_conf(&net, &case, Side::B, &conf));
        sites.charons.push(b);
        r?;
        sites.charon(Side::A).initiate()?;
        // Only gw-a has a datapath: sites.check_alive covers it and both charons.
        let up = wait_path(&net, &case, &mut || sites.check_alive())?;
        let size = xfrm_tests::scenario::transfer_size(8);
        let pings = ping_both_ways(&net, &case, 5)?;
        let [ra, rb] = transfers_both_ways(&net, &case, size, 5800)?;
        let first = sites.charon(Side::A).out_spi()?;
        let mut out = format!("up {up:.1?}; {pings}A->B {ra}; B->A {rb}");
        // A rekey from each side; traffic again after each.
        for (i, who) in [Side::A, Side::B].into_iter().enumerate() {
            let before = sites.charon(Side::A).out_spi()?;
            sites
                .charon(who)
                .swanctl(&["--rekey", "--child", "lan"])
                .with_context(|| format!("rekey from gw-{who:?}"))?;
            wait_for(sites, Duration::from_secs(20), "the rekey's new SPI", |s| {
                Ok(s.charon(Side::A).out_spi()? != before)
            })?;
            wait_path(&net, &case, &mut || sites.check_alive())?;
            let [ra, rb] = transfers_both_ways(&net, &case, size, 5810 + 2 * i as u16)?;
            out.push_str(&format!(
                "; after the rekey from gw-{who:?}: A->B {ra}; B->A {rb}"
            ));
        }
        if sites.charon(Side::A).out_spi()? == first {
            bail!("the SPI never changed");
        }
        Ok(out)
    })?;
    if rep.per_spi.len() < 6 {
        bail!("expected three SPI pairs on the wire: {}", rep.summary());
    }
    Ok(format!("{summary}\nwire: {}", rep.summary()))
}
