//! Lifetimes from charon through kernel-xfrmuser: charon hands its byte limits to add_sa,
//! the datapath counts and raises soft and hard expire events, the plugin passes them on.
//!
//! 1. `rekey_bytes` of 2 MiB (gw-a) and 3 MiB (gw-b): during paced TCP transfers of 8 MiB
//!    each way the datapaths' soft expires make charon rekey several times; the transfers arrive
//!    whole (SHA-256), and once they are done only the current CHILD_SA's two SAs are left
//!    in each datapath (the old ones deleted).
//! 2. `life_bytes` of 3 MiB without a rekey limit: the datapath's hard expire removes the SA
//!    under a transfer; charon deletes the CHILD_SA and creates it anew ("recreate after
//!    hard expire"), TCP retransmits what was dropped in between, the transfers arrive
//!    whole.
//!
//! A drop shunt below the CHILD_SA blocks the LANs' traffic while no CHILD_SA is there: the
//! wire carries IKE and ESP only, nothing in clear.

use std::time::Duration;

use anyhow::{bail, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    load::paced_transfers,
    scenario::{transfer_size, transfers_both_ways, wait_path, wire_capture},
    strongswan::{check_only_ipsec, run_test, sa_count, wait_for, with_sites, SiteConf},
};

fn case() -> Case {
    Case::new(
        "strongswan-lifetime",
        Endpoints::Hosts,
        Family::V4,
        Family::V4,
    )
    .sa(SaSpec::new(Mode::Tunnel, GCM128))
}

const MIB: u64 = 1 << 20;

/// Soft limits: rekey after `rekey` bytes, a hard limit far above.
fn rekeying(s: Side) -> SiteConf {
    let rekey = match s {
        Side::A => 2 * MIB,
        Side::B => 3 * MIB,
    };
    SiteConf::psk().drop_shunt().child(&format!(
        "rekey_bytes = {rekey}\n life_bytes = {}\n rand_bytes = 0",
        64 * MIB
    ))
}

/// A hard limit only.
fn expiring(_: Side) -> SiteConf {
    SiteConf::psk().drop_shunt().child(&format!(
        "rekey_bytes = 0\n life_bytes = {}\n rand_bytes = 0",
        3 * MIB
    ))
}

#[test]
fn strongswan_lifetime_bytes() {
    run_test("strongswan_lifetime_bytes", lifetime_bytes);
}

fn lifetime_bytes() -> Result<String> {
    let case = case();
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let (summary, rep) = with_sites(&case, cap, |sites| {
        // 1. Rekeys by bytes.
        sites.start_both(&net, &case, "charon-life", rekeying, None)?;
        let up = sites.initiate_and_wait(&net, &case)?;
        // Paced, so that charon's rekeys (a CREATE_CHILD_SA exchange each) keep up with
        // the limits.
        paced_transfers(&net, &case, 6000, 8 * MIB, 4_000_000)?;
        let log = sites.charon(Side::A).log() + &sites.charon(Side::B).log();
        let soft = log.matches("kernel-xfrmuser: soft expire").count();
        let rekeys = sites
            .charon(Side::A)
            .log()
            .matches("outbound CHILD_SA lan{")
            .count();
        if soft == 0 || rekeys < 2 {
            bail!("{soft} soft expire events, {rekeys} rekeys: expected the byte limits to rekey");
        }
        let settled = wait_for(sites, Duration::from_secs(20), "old SAs deleted", |x| {
            Ok(sa_count(x.gw(Side::A))? == 2 && sa_count(x.gw(Side::B))? == 2)
        })?;
        let mut out = format!(
            "up {up:.1?}; with rekey_bytes: 8 MiB each way at 4 MB/s intact; {soft} soft \
             expire events, {rekeys} rekeys in gw-a's log, two SAs left on each side \
             {settled:.1?} after"
        );

        // 2. A hard limit only: charon recreates the CHILD_SA after each expiry.
        sites
            .charon(Side::A)
            .swanctl(&["--terminate", "--ike", "site"])?;
        wait_for(sites, Duration::from_secs(10), "SAs gone", |x| {
            Ok(sa_count(x.gw(Side::A))? == 0 && sa_count(x.gw(Side::B))? == 0)
        })?;
        for s in [Side::A, Side::B] {
            sites.reload(&net, &case, s, &expiring(s))?;
        }
        sites.charon(Side::A).initiate()?;
        wait_path(&net, &case, &mut || sites.check_alive())?;
        let [ra, rb] = transfers_both_ways(&net, &case, transfer_size(8), 6010)?;
        let log = sites.charon(Side::A).log() + &sites.charon(Side::B).log();
        let hard = log.matches("kernel-xfrmuser: hard expire").count();
        let recreated = log
            .matches("scheduling CHILD_SA recreate after hard expire")
            .count();
        if hard == 0 || recreated == 0 {
            bail!("{hard} hard expire events, {recreated} CHILD_SAs recreated after them");
        }
        out.push_str(&format!(
            "; with life_bytes only: A->B {ra}; B->A {rb}; {hard} hard expire events, \
             {recreated} CHILD_SAs recreated"
        ));
        Ok(out)
    })?;
    check_only_ipsec(&rep)?;
    Ok(format!("{summary}\nwire: {}", rep.summary()))
}
