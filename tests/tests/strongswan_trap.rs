//! Trap policies through kernel-xfrmuser: both charons load the CHILD_SA with
//! `start_action = trap`, so only its policies are in the datapaths. The first packet from
//! host-a meets gw-a's out policy with no SA: the worker drops it and the datapath raises
//! an `acquire`, which the plugin hands to charon, which negotiates; then traffic flows
//! both ways. Nothing crosses the wire in clear meanwhile.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging, root_or_skip,
    scenario::{heavy, ping_both_ways, report, wait_path, wire_capture},
    strongswan::{logs, require_plugin, start_site, stop_sites},
};

fn case() -> Case {
    Case::new("strongswan-trap", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128))
}

#[test]
fn strongswan_trap_acquire() {
    let test = "strongswan_trap_acquire";
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let _one = heavy();
    if let Err(e) = trap_acquire() {
        panic!("{test}: {e:#}");
    }
}

fn trap_acquire() -> Result<()> {
    let t0 = Instant::now();
    require_plugin()?;
    xfrm_tests::daemon::xfrm_user_bin();
    let case = case();
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let mut gws = Vec::new();
    let mut charons = Vec::new();
    let r = (|| -> Result<String> {
        for s in [Side::A, Side::B] {
            let (d, c) = start_site(&net, &case, s, "charon-trap", "start_action = trap")?;
            gws.push(d);
            charons.push(c);
        }
        // Trapped: policies, no SA.
        for d in &gws {
            let count = d.xfrm_ok(&["state", "count"], "")?;
            let pols = d.xfrm_ok(&["policy", "count"], "")?;
            if count != "SAD count 0\n" || !pols.contains("OUT 1") {
                bail!("after loading the trap: {count}{pols}");
            }
        }
        // The first pings are dropped while charon negotiates: wait_path retries.
        let up = wait_path(&net, &case, &mut || {
            for d in gws.iter_mut() {
                d.check_alive()?;
            }
            for c in charons.iter_mut() {
                c.check_alive()?;
            }
            Ok(())
        })?;
        let log = charons[0].log();
        if !log.contains("kernel-xfrmuser: acquire for reqid") {
            bail!("gw-a's charon saw no acquire:\n{log}");
        }
        let pings = ping_both_ways(&net, &case, 5)?;
        let list = charons[0].swanctl(&["--list-sas"]).context("list-sas")?;
        if !list.contains("INSTALLED") {
            bail!("no CHILD_SA installed after the acquire:\n{list}");
        }
        Ok(format!("path up {up:.1?} after the first packet; {pings}"))
    })();
    let rep = cap.stop()?;
    let summary = match r {
        Ok(s) => s,
        Err(e) => {
            bail!("{e:#}\n{}", logs(&gws, &charons));
        }
    };
    rep.assert_no_leak(&case.name);
    report(&format!("{summary}\nwire: {}", rep.summary()));
    if rep.ipsec == 0 {
        bail!("no ESP on the wire: {}", rep.summary());
    }
    stop_sites(&mut charons, gws)?;
    report(&format!(
        "TIME strongswan_trap_acquire: {:.1?}",
        t0.elapsed()
    ));
    Ok(())
}
