//! Our daemon restarts under a running charon: after charon has installed a CHILD_SA
//! through kernel-xfrmuser, gw-a's `xfrm-user run` is killed (SIGKILL) and started again
//! with the same empty configuration. What charon added at run time is in the daemon's
//! state file: the restarted daemon has the same SAs and policies, traffic resumes on the
//! same SPIs, and the plugin reconnects its event connection by itself, so charon goes on
//! driving the datapath (a forced rekey installs a new CHILD_SA and deletes the old SAs).
//!
//! While the daemon is down its XDP programs stay attached and drop (fail closed); a drop
//! shunt keeps the LANs' traffic blocked while no CHILD_SA is installed. The wire carries
//! IKE and ESP only, nothing in clear.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    scenario::{transfer_size, transfers_both_ways, wait_path, wire_capture},
    strongswan::{
        all_lost, check_only_ipsec, run_test, sa_count, start_datapath, wait_for, with_sites,
        SiteConf,
    },
};

fn case() -> Case {
    Case::new(
        "strongswan-restart",
        Endpoints::Hosts,
        Family::V4,
        Family::V4,
    )
    .sa(SaSpec::new(Mode::Tunnel, GCM128))
}

#[test]
fn strongswan_daemon_restart() {
    run_test("strongswan_daemon_restart", daemon_restart);
}

/// The SPIs in `state list` output, sorted.
fn spis(list: &str) -> Vec<String> {
    let words: Vec<&str> = list.split_whitespace().collect();
    let mut v: Vec<String> = words
        .windows(2)
        .filter(|w| w[0] == "spi")
        .map(|w| w[1].to_string())
        .collect();
    v.sort();
    v
}

fn daemon_restart() -> Result<String> {
    let case = case();
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let (summary, rep) = with_sites(&case, cap, |sites| {
        sites.start_both(
            &net,
            &case,
            "charon-restart",
            |_| SiteConf::psk().drop_shunt(),
            None,
        )?;
        let up = sites.initiate_and_wait(&net, &case)?;
        let size = transfer_size(8);
        let [ra, rb] = transfers_both_ways(&net, &case, size, 6200)?;
        let before = sites.gw(Side::A).xfrm_ok(&["state", "list"], "")?;
        let policies = sites.gw(Side::A).xfrm_ok(&["policy", "list"], "")?;

        // kill -9 and the same daemon again.
        let status = sites.gws[0].proc().kill9();
        // Down, its programs stay attached and drop (fail closed).
        all_lost(&net, &case, Side::A)?;
        let new = start_datapath(&net, Side::A).context("restart")?;
        // The new guard shares the state file: the old one may go now.
        drop(std::mem::replace(&mut sites.gws[0], new));
        let after = sites.gw(Side::A).xfrm_ok(&["state", "list"], "")?;
        if spis(&after) != spis(&before) || spis(&after).len() != 2 {
            bail!("the restarted daemon's SAs differ:\nbefore:\n{before}\nafter:\n{after}");
        }
        let pols = sites.gw(Side::A).xfrm_ok(&["policy", "list"], "")?;
        if pols != policies {
            bail!("the restarted daemon's policies differ:\nbefore:\n{policies}\nafter:\n{pols}");
        }
        // The plugin's event connection comes back by itself.
        let reconnected = wait_for(
            sites,
            Duration::from_secs(10),
            "the plugin reconnecting",
            |x| {
                Ok(x.charon(Side::A)
                    .log()
                    .matches("kernel-xfrmuser: receiving events from")
                    .count()
                    >= 2)
            },
        )?;
        let resumed = wait_path(&net, &case, &mut || sites.check_alive())?;
        let [ra2, rb2] = transfers_both_ways(&net, &case, size, 6210)?;

        // charon still drives it: a rekey installs a new CHILD_SA, the old SAs go.
        let old = sites.charon(Side::A).out_spi()?;
        sites
            .charon(Side::A)
            .swanctl(&["--rekey", "--child", "lan"])
            .context("rekey after the restart")?;
        wait_for(
            sites,
            Duration::from_secs(20),
            "the rekey and the old SAs' deletion",
            |x| Ok(x.charon(Side::A).out_spi()? != old && sa_count(x.gw(Side::A))? == 2),
        )?;
        let [ra3, rb3] = transfers_both_ways(&net, &case, size, 6220)?;
        Ok(format!(
            "up {up:.1?}; A->B {ra}; B->A {rb}; gw-a's daemon killed ({status}), pings lost \
             meanwhile, started again: same SAs and policies, plugin reconnected in {reconnected:.1?}, path back \
             in {resumed:.1?}; A->B {ra2}; B->A {rb2}; rekeyed by charon afterwards: A->B \
             {ra3}; B->A {rb3}"
        ))
    })?;
    check_only_ipsec(&rep)?;
    Ok(format!("{summary}\nwire: {}", rep.summary()))
}
