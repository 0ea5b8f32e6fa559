//! Trap policies through kernel-xfrmuser: both charons load the CHILD_SA with
//! `start_action = trap`, so only its policies are in the datapaths. The first packet from
//! host-a meets gw-a's out policy with no SA: the worker drops it and the datapath raises
//! an `acquire`, which the plugin hands to charon, which negotiates; then traffic flows
//! both ways. Nothing crosses the wire in clear meanwhile.

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    scenario::{ping_both_ways, wait_path, wire_capture},
    strongswan::{run_test, with_sites, SiteConf},
};

fn case() -> Case {
    Case::new("strongswan-trap", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128))
}

#[test]
fn strongswan_trap_acquire() {
    run_test("strongswan_trap_acquire", trap_acquire);
}

fn trap_acquire() -> Result<String> {
    let case = case();
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let (summary, rep) = with_sites(&case, cap, |sites| {
        let conf = |_| SiteConf::psk().child("start_action = trap");
        sites.start_both(&net, &case, "charon-trap", conf, None)?;
        // Trapped: policies, no SA.
        for d in &sites.gws {
            let count = d.xfrm_ok(&["state", "count"], "")?;
            let pols = d.xfrm_ok(&["policy", "count"], "")?;
            if count != "SAD count 0\n" || !pols.contains("OUT 1") {
                bail!("after loading the trap: {count}{pols}");
            }
        }
        // The first pings are dropped while charon negotiates: wait_path retries.
        let up = wait_path(&net, &case, &mut || sites.check_alive())?;
        let log = sites.charon(Side::A).log();
        if !log.contains("kernel-xfrmuser: acquire for reqid") {
            bail!("gw-a's charon saw no acquire:\n{log}");
        }
        let pings = ping_both_ways(&net, &case, 5)?;
        let list = sites
            .charon(Side::A)
            .swanctl(&["--list-sas"])
            .context("list-sas")?;
        if !list.contains("INSTALLED") {
            bail!("no CHILD_SA installed after the acquire:\n{list}");
        }
        Ok(format!("path up {up:.1?} after the first packet; {pings}"))
    })?;
    if rep.ipsec == 0 {
        bail!("no ESP on the wire: {}", rep.summary());
    }
    Ok(format!("{summary}\nwire: {}", rep.summary()))
}
