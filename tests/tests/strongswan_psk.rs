//! IKEv2 drives the datapath: host-a — gw-a ══ wire ══ gw-b — host-b, on each gateway an
//! `xfrm-user run` started with no SA and no policy, and a charon with our kernel-xfrmuser
//! plugin. charon negotiates (PSK, ESP AES-GCM-128, tunnel between the two LANs) and
//! installs SAs and policies through the control socket.
//!
//! Pings and a TCP transfer each way arrive whole (SHA-256 compared); the wire carries the
//! hosts' traffic as ESP only, nothing in clear; `swanctl --list-sas` shows the byte and
//! packet counts our datapath keeps for each SPI.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging, root_or_skip,
    scenario::{heavy, ping_both_ways, report, transfers_both_ways, wait_path, wire_capture},
    strongswan::{list_sas_counters, logs, require_plugin, start_site, stop_sites},
};

/// Only the topology and traffic helpers use it: charon makes the SAs.
fn case() -> Case {
    Case::new("strongswan-psk", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128))
}

#[test]
fn strongswan_psk_gcm128_tunnel() {
    psk_tunnel(
        "strongswan_psk_gcm128_tunnel",
        "aes128gcm16",
        "ESP:AES_GCM_16-128",
    );
}

/// AES-CBC with HMAC-SHA-256 and ChaCha20-Poly1305: the plugin's other two mappings.
#[test]
fn strongswan_psk_cbc_and_chacha_tunnel() {
    psk_tunnel(
        "strongswan_psk_cbc_tunnel",
        "aes128-sha256",
        "ESP:AES_CBC-128/HMAC_SHA2_256_128",
    );
    psk_tunnel(
        "strongswan_psk_chacha_tunnel",
        "chacha20poly1305",
        "ESP:CHACHA20_POLY1305",
    );
}

/// `esp`: the CHILD_SA's proposal; `shown`: how `swanctl --list-sas` names what was
/// negotiated.
fn psk_tunnel(test: &str, esp: &str, shown: &str) {
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let _one = heavy();
    if let Err(e) = psk_tunnel_with(test, esp, shown) {
        panic!("{test}: {e:#}");
    }
}

fn psk_tunnel_with(test: &str, esp: &str, shown: &str) -> Result<()> {
    let t0 = Instant::now();
    require_plugin()?;
    xfrm_tests::daemon::xfrm_user_bin();
    let case = case();
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let mut gws = Vec::new();
    let mut charons = Vec::new();
    let r = (|| -> Result<Vec<u32>> {
        for s in [Side::A, Side::B] {
            let (d, c) = start_site(&net, &case, s, "charon", &format!("esp_proposals = {esp}"))?;
            gws.push(d);
            charons.push(c);
        }
        for d in &gws {
            assert_eq!(d.xfrm_ok(&["state", "count"], "")?, "SAD count 0\n");
        }
        report(&format!("daemons and charons up at {:.1?}", t0.elapsed()));
        charons[0]
            .swanctl(&["--initiate", "--child", "lan", "--timeout", "30"])
            .context("initiate")?;
        let up = wait_path(&net, &case, &mut || {
            for d in gws.iter_mut() {
                d.check_alive()?;
            }
            for c in charons.iter_mut() {
                c.check_alive()?;
            }
            Ok(())
        })?;
        let pings = ping_both_ways(&net, &case, 5)?;
        let size = xfrm_tests::scenario::transfer_size(16);
        let [ra, rb] = transfers_both_ways(&net, &case, size, 5700)?;
        // What charon reports is what the datapath counted, SPI by SPI.
        let mut spis = Vec::new();
        for (c, d) in charons.iter().zip(&gws) {
            let list = c.swanctl(&["--list-sas"])?;
            if !list.contains(shown) {
                bail!("expected a CHILD_SA with {shown} in:\n{list}");
            }
            let counters = list_sas_counters(&list);
            if counters.len() != 2 {
                bail!("expected one CHILD_SA (in and out) in:\n{list}");
            }
            for (inbound, spi, bytes, packets) in counters {
                let ours = d.xfrm_ok(
                    &["-j", "-s", "state", "list", "spi", &format!("{spi:#x}")],
                    "",
                )?;
                let v: serde_json::Value = serde_json::from_str(&ours).context("state list -j")?;
                let cur = &v[0]["lifetime"]["current"];
                let (b, p) = (cur["bytes"].as_u64(), cur["packets"].as_u64());
                if b != Some(bytes) || p != Some(packets) || packets == 0 {
                    bail!(
                        "SPI {spi:#x} (in: {inbound}): swanctl says {bytes} bytes {packets} \
                         packets, the datapath {b:?} {p:?}:\n{list}\n{ours}"
                    );
                }
                if !inbound {
                    spis.push(spi);
                }
            }
        }
        report(&format!(
            "IKE + CHILD_SA up and path answering in {up:.1?}; {pings}A->B {ra}; B->A {rb}; \
             outbound SPIs {spis:x?}"
        ));
        Ok(spis)
    })();
    report(&format!("traffic done at {:.1?}", t0.elapsed()));
    let rep = cap.stop()?;
    report(&format!("capture stopped at {:.1?}", t0.elapsed()));
    let spis = match r {
        Ok(spis) => spis,
        Err(e) => {
            bail!("{e:#}\n{}", logs(&gws, &charons));
        }
    };
    rep.assert_no_leak(&case.name);
    report(&format!("wire: {}", rep.summary()));
    // The hosts' traffic crossed as ESP with charon's SPIs, both ways.
    for spi in &spis {
        if rep.per_spi.get(spi).copied().unwrap_or(0) == 0 {
            bail!(
                "no ESP frame with SPI {spi:#x} on the wire: {}",
                rep.summary()
            );
        }
    }
    stop_sites(&mut charons, gws)?;
    report(&format!("TIME {test}: {:.1?}", t0.elapsed()));
    Ok(())
}
