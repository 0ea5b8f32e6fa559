//! IKEv2 with certificates through kernel-xfrmuser, and the ways a CHILD_SA ends: the test
//! makes a CA with strongSwan's `pki` and a certificate per gateway; the charons
//! authenticate with them (`auth = pubkey`) and negotiate ESP AES-GCM-256 in tunnel mode.
//! Each charon also traps a drop shunt over the LANs: its block policies sit below the
//! CHILD_SA's, so when the CHILD_SA goes the LANs' traffic is dropped, not sent in clear.
//!
//! 1. Pings and a TCP transfer each way arrive whole (SHA-256 compared); `swanctl
//!    --list-sas` shows what the datapaths counted, SPI by SPI.
//! 2. `swanctl --terminate`: both datapaths hold no SA and no policy of the CHILD_SA (the
//!    shunt's block policies only); pings are dropped and counted (the XDP program's
//!    drop_block).
//! 3. Initiated again; then gw-b's charon is killed (SIGKILL, no word to its peer). gw-a's
//!    charon sees no inbound traffic on the CHILD_SA (query_sa's last use), sends DPD,
//!    gives up after its retransmits and clears the CHILD_SA (`dpd_action = clear`): gw-a's
//!    datapath holds no SA; host-a's pings are blocked, what gw-b still sends is dropped
//!    for want of an SA (XfrmInNoStates).
//!
//! Throughout, the wire carries IKE and ESP only: nothing in clear.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM256},
    scenario::{ping_both_ways, transfer_size, transfers_both_ways, wire_capture},
    strongswan::{
        all_lost, check_list_sas, check_only_ipsec, check_spis_on_wire, program_counter, run_test,
        sa_count, wait_for, with_sites, Ca, SiteConf, Sites,
    },
};

/// What the shunt's block policies drop: the inside XDP program's counter.
const BLOCKED: (&str, &str) = ("xdp inside", "drop_block");

fn case() -> Case {
    Case::new("strongswan-cert", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM256))
}

fn conf(_: Side) -> SiteConf {
    SiteConf::cert()
        .esp("aes256gcm16")
        .drop_shunt()
        .conn("dpd_delay = 2s")
        .child("dpd_action = clear")
        // DPD gives up after 1 + 1 + 1 + 1 s.
        .charon("retransmit_timeout = 1\n  retransmit_base = 1")
}

#[test]
fn strongswan_cert_terminate_dpd() {
    run_test("strongswan_cert_terminate_dpd", cert_terminate_dpd);
}

/// The datapath of side `s` holds no SA, and of policies only the shunt's (no template).
fn only_shunt_left(sites: &Sites, s: Side) -> Result<bool> {
    let pols = sites.gw(s).xfrm_ok(&["policy", "list"], "")?;
    Ok(sa_count(sites.gw(s))? == 0 && !pols.contains("tmpl ") && pols.contains("block"))
}

/// Pings from side `s`'s host, which must all be lost; waits until the datapath of side
/// `at` has counted them with `count` (`(hook, counter)` of its programs' counter line, or
/// `("xfrm", name)` for an xfrm counter); returns how many more it counted.
fn dropped(
    net: &GatewayNet,
    case: &Case,
    sites: &mut Sites,
    s: Side,
    at: Side,
    count: (&str, &str),
) -> Result<u64> {
    let read = |x: &Sites| match count {
        ("xfrm", name) => x.gw(at).xfrm_counter(name),
        (hook, name) => program_counter(x.gw(at), hook, name),
    };
    let before = read(sites);
    all_lost(net, case, s)?;
    wait_for(
        sites,
        Duration::from_secs(5),
        &format!("{count:?} counted on gw-{at:?}"),
        |x| Ok(read(x) > before),
    )?;
    Ok(read(sites) - before)
}

fn cert_terminate_dpd() -> Result<String> {
    let case = case();
    let net = GatewayNet::new(NetOpts::default())?;
    let ca = Ca::new("cert")?;
    let cap = wire_capture(&net, &case)?;
    let (summary, rep) = with_sites(&case, cap, |sites| {
        sites.start_both(&net, &case, "charon-cert", conf, Some(&ca))?;
        // 1. Up, traffic, counters.
        let up = sites.initiate_and_wait(&net, &case)?;
        let log = sites.charon(Side::A).log();
        if !log.contains("authentication of 'gw-b' with ECDSA") {
            bail!("gw-a's charon did not authenticate gw-b by its certificate:\n{log}");
        }
        let pings = ping_both_ways(&net, &case, 3)?;
        let [ra, rb] = transfers_both_ways(&net, &case, transfer_size(16), 5900)?;
        let spis = [
            check_list_sas(sites, Side::A, "ESP:AES_GCM_16-256")?,
            check_list_sas(sites, Side::B, "ESP:AES_GCM_16-256")?,
        ];
        let mut out = format!("up {up:.1?}; {pings}A->B {ra}; B->A {rb}");

        // 2. Terminate: the CHILD_SA's SAs and policies go on both sides, traffic dropped.
        sites
            .charon(Side::A)
            .swanctl(&["--terminate", "--ike", "site"])
            .context("terminate")?;
        let gone = wait_for(
            sites,
            Duration::from_secs(10),
            "SAs and policies gone",
            |x| Ok(only_shunt_left(x, Side::A)? && only_shunt_left(x, Side::B)?),
        )?;
        let blocked_a = dropped(&net, &case, sites, Side::A, Side::A, BLOCKED)?;
        let blocked_b = dropped(&net, &case, sites, Side::B, Side::B, BLOCKED)?;
        out.push_str(&format!(
            "; terminated: no SA or policy of it left after {gone:.1?}, pings dropped \
             (blocked by the shunt: +{blocked_a} on gw-a, +{blocked_b} on gw-b)"
        ));

        // 3. Again; then gw-b's charon dies and gw-a's DPD clears the CHILD_SA.
        sites.initiate_and_wait(&net, &case)?;
        sites.charons[1].kill9();
        let cleared = wait_for(
            sites,
            Duration::from_secs(30),
            "DPD clearing the CHILD_SA",
            |x| only_shunt_left(x, Side::A),
        )?;
        let log = sites.charon(Side::A).log();
        if !log.contains("sending DPD request") || !log.contains("giving up after") {
            bail!("no DPD that gave up in gw-a's charon log:\n{log}");
        }
        let block = dropped(&net, &case, sites, Side::A, Side::A, BLOCKED)?;
        // gw-b's datapath still has its SAs and sends ESP that gw-a has no SA for.
        let no_state = dropped(
            &net,
            &case,
            sites,
            Side::B,
            Side::A,
            ("xfrm", "XfrmInNoStates"),
        )?;
        let gw_b = sites.gw(Side::B);
        if sa_count(gw_b)? == 0 {
            bail!("gw-b's datapath lost its SAs with its charon");
        }
        out.push_str(&format!(
            "; gw-b's charon killed: gw-a's DPD cleared the CHILD_SA in {cleared:.1?}, \
             host-a's pings blocked (+{block}), gw-b's ESP without SA (XfrmInNoStates \
             {no_state})"
        ));
        Ok((spis, out))
    })?;
    check_only_ipsec(&rep)?;
    check_spis_on_wire(&rep, &summary.0)?;
    Ok(format!("{}\nwire: {}", summary.1, rep.summary()))
}
