//! What the control plane added survives `kill -9` of the daemon (docs/state-file.md):
//! host-a — gw-a ══ wire ══ gw-b — host-b, `xfrm-user run` on both, started with policies
//! only (gw-a even without its out policy: the classifier would pass that flow to the
//! kernel, in clear, were the policy not there), gw-b on an empty configuration.
//!
//! Through `xfrm-user xfrm -batch -` gw-a gets its out policy and its SAs, gw-b its policies
//! and SAs; a
//! third SA added and deleted on gw-a must neither come back nor leave its key in the state
//! file. Numbered UDP datagrams flow both ways; gw-a is killed (`kill -9`) and started again
//! on the same configuration. Checked: the SAs and policies listed after the restart are
//! those listed before; datagrams sent after the restart arrive; on the wire every sequence
//! number of gw-a's outbound SA after the restart is above every one before (none reused,
//! none going backwards) and nothing crossed in clear; gw-b counts no replay.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use xfrm_tests::{
    capture::Capture,
    daemon::Daemon,
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging,
    load::DatagramStreams,
    root_or_skip,
    scenario::{
        check_capture, config_lines, daemon_logs, heavy, report, start_ctl_gateway, wait_path,
        wire_capture,
    },
};

/// One datagram every 2 ms each way.
const UDP_INTERVAL: Duration = Duration::from_millis(2);
/// The SA added and deleted before the kill: its key must be nowhere in the state file.
const GONE_KEY: &str = "5eb0a5ed5eb0a5ed5eb0a5ed5eb0a5eddeadc0de";

#[test]
fn control_runtime_changes_survive_kill9() {
    let test = "control_runtime_changes_survive_kill9";
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let _one = heavy();
    let t0 = Instant::now();
    let r = (|| -> Result<String> {
        xfrm_tests::daemon::xfrm_user_bin();
        let case = Case::new("ctl-restart", Endpoints::Hosts, Family::V4, Family::V4)
            .sa(SaSpec::new(Mode::Tunnel, GCM128));
        let net = GatewayNet::new(NetOpts::default())?;
        let cap = wire_capture(&net, &case)?;
        let policies = config_lines(&case.config(&net, Side::A), "policy ");
        let (out, rest): (Vec<&str>, Vec<&str>) =
            policies.lines().partition(|l| l.contains(" dir out"));
        let a_conf: String = rest.iter().map(|l| format!("{l}\n")).collect();
        // gw-b starts on an empty configuration (as under an IKE daemon that installs
        // everything).
        let mut gws = vec![
            start_ctl_gateway(&net, Side::A, &a_conf)?,
            start_ctl_gateway(&net, Side::B, "")?,
        ];
        let r = body(&net, &case, &cap, &mut gws, &a_conf, &out.join("\n"));
        let rep = cap.stop()?;
        let mut out = match r {
            Ok(o) => o,
            Err(e) => bail!("{e:#}\n{}", daemon_logs(&gws.iter().collect::<Vec<_>>())),
        };
        report(&format!("  wire: {}", rep.summary()));
        check_capture(&net, &case, &rep)?;
        // gw-a's outbound SA on the wire: before the kill (phase 0), after the restart
        // (phase 2 on).
        let spi = case.bundle(&net, Side::A)[0].spi;
        let (Some(before), Some(after)) = (rep.seq_range(spi, 0..1), rep.seq_range(spi, 2..9))
        else {
            bail!(
                "SA {spi:#x}: no frames before or after the restart: {}",
                rep.summary()
            );
        };
        if after.min <= before.max {
            bail!(
                "SA {spi:#x}: sequence numbers reused: {before:?} before the kill, {after:?} after"
            );
        }
        if let Some(n) = rep.seq_backwards.get(&spi) {
            bail!("SA {spi:#x}: {n} frames went backwards on the wire");
        }
        out += &format!(
            "  SA {spi:#x} on the wire: seq {}..={} before the kill, {}..={} after the restart\n",
            before.min, before.max, after.min, after.max
        );
        for d in gws {
            let st = d.stop();
            if !st.success() {
                bail!("stop: {st}");
            }
        }
        Ok(out)
    })();
    match r {
        Ok(out) => report(&format!("{out}TIME {test}: {:.1?}", t0.elapsed())),
        Err(e) => panic!("{test}: {e:#}"),
    }
}

/// The tables as listed, without what moves with traffic (sequence numbers).
fn tables(d: &Daemon) -> Result<String> {
    let states: String = d
        .xfrm_ok(&["--keys", "state", "list"], "")?
        .lines()
        .filter(|l| !l.contains("anti-replay context"))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(states + &d.xfrm_ok(&["policy", "list"], "")?)
}

fn body(
    net: &GatewayNet,
    case: &Case,
    cap: &Capture,
    gws: &mut [Daemon],
    a_conf: &str,
    a_out_policy: &str,
) -> Result<String> {
    let gone = format!(
        "state add src 192.0.2.1 dst 192.0.2.77 proto esp spi 0x7777 reqid 77 mode tunnel aead 'rfc4106(gcm(aes))' 0x{GONE_KEY} 128\n"
    );
    let a_states = config_lines(&case.config(net, Side::A), "state ");
    gws[0].xfrm_ok(
        &["-batch", "-"],
        &format!("{a_out_policy}\n{a_states}{gone}"),
    )?;
    gws[0].xfrm_ok(
        &[
            "state",
            "delete",
            "dst",
            "192.0.2.77",
            "proto",
            "esp",
            "spi",
            "0x7777",
        ],
        "",
    )?;
    let b = case.config(net, Side::B);
    gws[1].xfrm_ok(
        &["-batch", "-"],
        &(config_lines(&b, "policy ") + &config_lines(&b, "state ")),
    )?;
    wait_path(net, case, &mut || {
        for d in gws.iter_mut() {
            d.check_alive()?;
        }
        Ok(())
    })?;

    // Numbered datagrams both ways for the whole test.
    let streams = DatagramStreams::start(net, case, [7201, 7202], UDP_INTERVAL);
    let r = (|| -> Result<String> {
        std::thread::sleep(Duration::from_millis(1500));
        let before = tables(&gws[0])?;
        let oseq_before = gws[0].xfrm_ok(&["-s", "state", "list"], "")?;
        let st = gws[0].proc().kill9();
        cap.mark();
        // Meanwhile the programs stay and drop (fail closed): nothing crosses in clear.
        std::thread::sleep(Duration::from_millis(500));
        let state = std::fs::read(gws[0].state_path())?;
        if state
            .windows(GONE_KEY.len())
            .any(|w| w == GONE_KEY.as_bytes())
        {
            bail!("the deleted SA's key is in the state file after the kill");
        }
        let restarted = start_ctl_gateway(net, Side::A, a_conf)?;
        drop(std::mem::replace(&mut gws[0], restarted));
        let sent_at_restart = streams.sent();
        cap.mark();
        let after = tables(&gws[0])?;
        if after != before {
            bail!("tables after the restart differ:\nbefore:\n{before}\nafter:\n{after}");
        }
        if gws[0]
            .xfrm(
                &[
                    "state",
                    "get",
                    "dst",
                    "192.0.2.77",
                    "proto",
                    "esp",
                    "spi",
                    "0x7777",
                ],
                "",
            )?
            .status
            .success()
        {
            bail!("the SA deleted before the kill came back");
        }
        // Traffic resumes both ways (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, s) in [Side::A, Side::B].into_iter().enumerate() {
            loop {
                let n = streams.received_since(&sent_at_restart)[i];
                if n >= 100 {
                    break;
                }
                gws[0].check_alive()?;
                if Instant::now() > deadline {
                    bail!("{s:?}: {n} datagrams sent after the restart arrived");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let log = gws[0].log();
        let line = log
            .lines()
            .find(|l| l.contains("from run time:"))
            .unwrap_or("(no restore line)")
            .to_string();
        Ok(format!(
            "  killed: {st}; before the kill:\n{}  restart: {line}\n",
            oseq_before
                .lines()
                .filter(|l| l.contains("anti-replay") || l.contains("spi"))
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        ))
    })();
    let tallies = streams.finish();
    let mut out = r?;
    for t in tallies? {
        out += &format!("  {t} (the lost ones while gw-a was down)\n");
    }
    // gw-b took nothing twice: a reused number would count as a replay.
    std::thread::sleep(Duration::from_millis(1200));
    let errs: Vec<_> = gws[1]
        .xfrm_counters()
        .into_iter()
        .filter(|(n, _)| n.contains("SeqError") || n.contains("Replay"))
        .collect();
    if !errs.is_empty() {
        bail!("gw-b counted replays: {errs:?}");
    }
    Ok(out)
}
