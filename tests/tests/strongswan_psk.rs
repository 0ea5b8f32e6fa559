//! IKEv2 drives the datapath: host-a — gw-a ══ wire ══ gw-b — host-b, on each gateway an
//! `xfrm-user run` started with no SA and no policy, and a charon with our kernel-xfrmuser
//! plugin. charon negotiates (PSK, tunnel between the two LANs) and installs SAs and
//! policies through the control socket.
//!
//! One topology, one CHILD_SA after the other, each with one of the ESP proposals the
//! plugin maps: pings and a TCP transfer each way arrive whole (SHA-256 compared);
//! `swanctl --list-sas` shows the byte and packet counts our datapath keeps for each SPI;
//! `swanctl --terminate` then leaves no SA in either datapath. Proposals the datapath does
//! not implement are refused at add_sa, with the reason in charon's log, and leave no SA.
//! The wire carries the hosts' traffic as ESP only, nothing in clear.

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    scenario::{ping_both_ways, transfer_size, transfers_both_ways, wire_capture},
    strongswan::{
        check_list_sas, check_only_ipsec, check_spis_on_wire, run_test, sa_count, wait_for,
        with_sites, SiteConf,
    },
};

/// Only the topology and traffic helpers use it: charon makes the SAs.
fn case() -> Case {
    Case::new("strongswan-psk", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128))
}

/// (esp_proposals, how `swanctl --list-sas` names what was negotiated).
const SUPPORTED: &[(&str, &str)] = &[
    ("aes128gcm16", "ESP:AES_GCM_16-128"),
    ("aes128-sha256", "ESP:AES_CBC-128/HMAC_SHA2_256_128"),
    ("aes128ctr-sha256", "ESP:AES_CTR-128/HMAC_SHA2_256_128"),
    ("chacha20poly1305", "ESP:CHACHA20_POLY1305"),
];

/// (esp_proposals, what charon's log must say): charon implements them, the datapath not.
const REFUSED: &[(&str, &str)] = &[
    (
        "aes128ccm16",
        "kernel-xfrmuser: ESP encryption AES_CCM_16 is not supported by the datapath",
    ),
    (
        "aes192gcm16",
        "kernel-xfrmuser: the datapath refused `state add",
    ),
];

#[test]
fn strongswan_psk_proposals() {
    run_test("strongswan_psk_proposals", proposals);
}

fn proposals() -> Result<String> {
    let case = case();
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let (summary, rep) = with_sites(&case, cap, |sites| {
        sites.start_both(&net, &case, "charon", |_| SiteConf::psk(), None)?;
        for s in [Side::A, Side::B] {
            if sa_count(sites.gw(s))? != 0 {
                bail!("SAs in a datapath before charon negotiated");
            }
        }
        let mut out = Vec::new();
        let size = transfer_size(8);
        for (i, (esp, shown)) in SUPPORTED.iter().enumerate() {
            for s in [Side::A, Side::B] {
                sites.reload(&net, &case, s, &SiteConf::psk().esp(esp))?;
            }
            let up = sites
                .initiate_and_wait(&net, &case)
                .with_context(|| format!("with {esp}"))?;
            let pings = ping_both_ways(&net, &case, 3)?;
            let [ra, rb] = transfers_both_ways(&net, &case, size, 5700 + 2 * i as u16)
                .with_context(|| format!("with {esp}"))?;
            // What charon reports is what the datapath counted, SPI by SPI.
            let spis = [
                check_list_sas(sites, Side::A, shown)?,
                check_list_sas(sites, Side::B, shown)?,
            ];
            sites
                .charon(Side::A)
                .swanctl(&["--terminate", "--ike", "site"])?;
            wait_for(
                sites,
                std::time::Duration::from_secs(10),
                "SAs gone after --terminate",
                |s| Ok(sa_count(s.gw(Side::A))? == 0 && sa_count(s.gw(Side::B))? == 0),
            )?;
            out.push((
                spis,
                format!("{esp}: up {up:.1?}; {pings}A->B {ra}; B->A {rb}"),
            ));
        }
        for (esp, says) in REFUSED {
            for s in [Side::A, Side::B] {
                sites.reload(&net, &case, s, &SiteConf::psk().esp(esp))?;
            }
            if sites.charon(Side::A).initiate().is_ok() {
                bail!("{esp}: the CHILD_SA came up, the datapath has no such algorithm");
            }
            let log = sites.charon(Side::A).log() + &sites.charon(Side::B).log();
            if !log.contains(says) {
                bail!("{esp}: no `{says}` in charon's log");
            }
            for s in [Side::A, Side::B] {
                if sa_count(sites.gw(s))? != 0 {
                    bail!("{esp}: an SA left in gw-{s:?}'s datapath after the refusal");
                }
            }
            sites
                .charon(Side::A)
                .swanctl(&["--terminate", "--ike", "site"])
                .ok();
        }
        Ok(out)
    })?;
    check_only_ipsec(&rep)?;
    // The hosts' traffic crossed as ESP with charon's SPIs, both ways.
    let mut lines = Vec::new();
    for (spis, line) in summary {
        check_spis_on_wire(&rep, &spis)?;
        lines.push(line);
    }
    Ok(format!("{}\nwire: {}", lines.join("\n"), rep.summary()))
}
