//! The runtime control plane (docs/control-protocol.md) between two running gateways:
//! host-a — gw-a ══ wire ══ gw-b — host-b, `xfrm-user run` on both.
//!
//! - Started with policies only, the gateways drop the protected traffic (counted
//!   `XfrmOutNoStates`) and nothing crosses the wire in clear; `xfrm-user xfrm -batch -`
//!   (`state add …` lines on standard input, keys never in argv) on both brings the path up,
//!   a transfer each way arrives whole, and `monitor` reported each SA.
//! - Lifetimes: SAs added with packet, byte and time limits raise their soft and hard
//!   `Expired` events in `monitor`; after the hard one the SA is gone and the flow's next
//!   packet raises an `acquire` instead of leaving in clear.
//! - Reload (`xfrm-user reload`, SIGHUP) applies what changed in the file and nothing else:
//!   an SA added at run time stays, the unchanged SAs go on counting.
//! - Bad requests (an unknown SPI, malformed words, a non-root client, an oversized message,
//!   10 000 random byte strings) each get a clear error, change nothing, and the gateway
//!   goes on forwarding.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    daemon::Daemon,
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging, root_or_skip,
    scenario::{
        check_capture, config_lines as lines_of, daemon_logs, heavy, ping_both_ways, report,
        start_ctl_gateway as start, transfers_both_ways, wait_path, wire_capture,
    },
    traffic::ping,
};
use xfrm_user::{
    config::request::parse_request,
    ctl::{client::Client, protocol, render::Show},
};

fn case() -> Case {
    Case::new(
        "ctl-esp-tunnel-v4",
        Endpoints::Hosts,
        Family::V4,
        Family::V4,
    )
    .sa(SaSpec::new(Mode::Tunnel, GCM128))
}

/// One test: the topology, a capture on the wire, both gateways started (with their
/// policies only, or their whole configuration), `body`, then the capture checked (nothing
/// in clear, both directions' SAs seen) and the gateways stopped; `body`'s report and the
/// time printed.
fn run(
    test: &str,
    policies_only: bool,
    body: fn(&GatewayNet, &Case, &mut [Daemon]) -> Result<String>,
) {
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let _one = heavy();
    let t0 = Instant::now();
    let r = (|| -> Result<String> {
        xfrm_tests::daemon::xfrm_user_bin();
        let case = case();
        let net = GatewayNet::new(NetOpts::default())?;
        let cap = wire_capture(&net, &case)?;
        let mut gws = Vec::new();
        for s in [Side::A, Side::B] {
            let config = case.config(&net, s);
            let config = if policies_only {
                lines_of(&config, "policy ")
            } else {
                config
            };
            gws.push(start(&net, s, &config)?);
        }
        let r = body(&net, &case, &mut gws);
        let rep = cap.stop()?;
        let out = match r {
            Ok(o) => o,
            Err(e) => bail!("{e:#}\n{}", daemon_logs(&gws.iter().collect::<Vec<_>>())),
        };
        check_capture(&net, &case, &rep)?;
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

/// Waits (bounded) until the daemon's counter line shows `name` above 0.
fn wait_counter(d: &Daemon, name: &str) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = d.xfrm_counter(name);
        if v > 0 {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{name} still 0 after 15 s; log:\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn control_state_add_brings_the_path_up() {
    run(
        "control_state_add_brings_the_path_up",
        true,
        state_add_brings_the_path_up,
    );
}

fn state_add_brings_the_path_up(
    net: &GatewayNet,
    case: &Case,
    gws: &mut [Daemon],
) -> Result<String> {
    // Policies, no SA: the classifier sends the flow to the workers, which find no SA
    // for the template and drop (XfrmOutNoStates), as the kernel does without IKE.
    let host_a = net.topo.ns(case.traffic_ns(net, Side::A));
    if ping(host_a, case.traffic_addr(net, Side::B), 3, b'A').is_ok() {
        bail!("a ping crossed before any SA was added");
    }
    let dropped = wait_counter(&gws[0], "XfrmOutNoStates")?;
    for d in gws.iter() {
        assert_eq!(d.xfrm_ok(&["state", "count"], "")?, "SAD count 0\n");
    }
    // A monitor on gw-a sees each SA added.
    let mut mon = Client::connect(&gws[0].ctl_path()).map_err(anyhow::Error::msg)?;
    mon.monitor().map_err(anyhow::Error::msg)?;
    mon.set_timeout(Duration::from_secs(10))
        .map_err(anyhow::Error::msg)?;
    for (s, d) in [Side::A, Side::B].iter().zip(gws.iter()) {
        let states = lines_of(&case.config(net, *s), "state ");
        d.xfrm_ok(&["-batch", "-"], &states)?;
    }
    let mut events = String::new();
    for _ in 0..2 {
        events.push_str(&mon.next_event().map_err(anyhow::Error::msg)?);
    }
    for s in [Side::A, Side::B] {
        let spi = case.bundle(net, s)[0].spi;
        if !events.contains(&format!("spi 0x{spi:08x}")) {
            bail!("monitor did not report SA {spi:#x}: {events}");
        }
    }
    let up = wait_path(net, case, &mut || {
        for d in gws.iter_mut() {
            d.check_alive()?;
        }
        Ok(())
    })?;
    let pings = ping_both_ways(net, case, 5)?;
    let size = 8 << 20;
    let [ra, rb] = transfers_both_ways(net, case, size, 5600)?;
    // Keys never printed unless asked for.
    let list = gws[0].xfrm_ok(&["-s", "state", "list"], "")?;
    let key = &case.bundle(net, Side::A)[0].key;
    if list.contains(key.as_str()) || !list.contains("(key hidden") {
        bail!("state list showed a key: {list}");
    }
    let keys = gws[0].xfrm_ok(&["--keys", "state", "list"], "")?;
    if !keys.contains(key.as_str()) {
        bail!("state list --keys did not show the key: {keys}");
    }
    let json = gws[0].xfrm_ok(&["-j", "-s", "state", "list"], "")?;
    let v: serde_json::Value = serde_json::from_str(&json).context("state list -j")?;
    let out_spi = case.bundle(net, Side::A)[0].spi;
    let sa = v
        .as_array()
        .and_then(|a| a.iter().find(|x| x["spi"] == out_spi))
        .context("the outbound SA in the JSON list")?;
    if sa["lifetime"]["current"]["packets"].as_u64().unwrap_or(0) == 0 {
        bail!("no packets counted on the outbound SA: {sa}");
    }
    Ok(format!(
        "XfrmOutNoStates {dropped} dropped before the SAs; path up {up:.1?} after; {pings}A->B {ra}; B->A {rb}; "
    ))
}

#[test]
fn control_bad_requests_change_nothing() {
    run(
        "control_bad_requests_change_nothing",
        false,
        bad_requests_change_nothing,
    );
}

/// A deterministic stream of bytes (no timing, no seed from the clock: a failure repeats).
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn bad_requests_change_nothing(
    net: &GatewayNet,
    case: &Case,
    gws: &mut [Daemon],
) -> Result<String> {
    let bin = xfrm_tests::daemon::xfrm_user_bin();
    wait_path(net, case, &mut || {
        for d in gws.iter_mut() {
            d.check_alive()?;
        }
        Ok(())
    })?;
    let d = &gws[0];
    let tables = || -> Result<String> {
        Ok(d.xfrm_ok(&["--keys", "state", "list"], "")? + &d.xfrm_ok(&["policy", "list"], "")?)
    };
    let before = tables()?;
    let path = d.ctl_path();
    let mut c = Client::connect(&path).map_err(anyhow::Error::msg)?;
    let mut ask = |cmd: &str| c.request(Show::default(), cmd);
    let spi = case.bundle(net, Side::A)[0].spi;
    let dst = case.bundle(net, Side::A)[0].dst;
    for (cmd, want) in [
        (
            format!("state delete dst {dst} proto esp spi 0x7777"),
            "no SA with dst",
        ),
        (
            format!("state delete dst {dst} proto esp spi {spi:#x} reqid"),
            "request:1: word 'reqid': expected an SA id word",
        ),
        (
            "state add src 192.0.2.1".to_string(),
            "request:1: word 'state'",
        ),
        ("policy frobnicate".to_string(), "word 'frobnicate'"),
        (
            case.config(net, Side::A)
                .lines()
                .find(|l| l.starts_with("state "))
                .unwrap_or("")
                .to_string(),
            "File exists",
        ),
        (
            "policy delete dir out src 10.99.0.0/16 dst 10.98.0.0/16".to_string(),
            "No such file or directory",
        ),
    ] {
        match ask(&cmd) {
            Err(e) if e.contains(want) => {}
            other => bail!("{cmd:?}: expected an error with {want:?}, got {other:?}"),
        }
    }
    // Oversized: refused whole, with its size.
    let mut big = protocol::request(Show::default(), "state flush");
    big.extend(std::iter::repeat_n(b' ', protocol::MAX_REQUEST));
    c.send_raw(&big).map_err(anyhow::Error::msg)?;
    match c.reply() {
        Err(e) if e.contains("expected at most 8192") => {}
        other => bail!("oversized request: {other:?}"),
    }
    // Random byte strings, half of them behind a valid header: an error each.
    let mut rng = Xorshift(0x5eed_1234_abcd_0001);
    let words: &[&[u8]] = &[
        b"state ",
        b"policy ",
        b"add ",
        b"delete ",
        b"flush ",
        b"update ",
        b"src ",
        b"dst ",
        b"spi ",
        b"0x10 ",
        b"proto ",
        b"esp ",
        b"dir ",
        b"out ",
        b"'",
        b"\\",
        b"\n",
        b"#",
        b"10.0.0.0/8 ",
        b"tmpl ",
        b"\xff",
        b"\0",
        b"allocspi ",
    ];
    let mut errors = 0;
    for i in 0..10_000u32 {
        let mut m: Vec<u8> = if i.is_multiple_of(2) {
            b"xfrmctl 1\n".to_vec()
        } else {
            Vec::new()
        };
        let n = rng.next() % 24;
        for _ in 0..n {
            let r = rng.next();
            if r.is_multiple_of(3) {
                m.push((r >> 8) as u8);
            } else {
                m.extend_from_slice(words[(r >> 8) as usize % words.len()]);
            }
        }
        if m.is_empty() {
            m.push(b'x');
        }
        // The one thing that must not be sent: a valid change (`state flush` can be
        // spelt by chance). Reads and refused requests are the point.
        let valid_change = protocol::parse(&m, m.len())
            .is_ok_and(|msg| parse_request(msg.command, "request").is_ok_and(|r| r.is_change()));
        if valid_change {
            continue;
        }
        c.send_raw(&m).map_err(anyhow::Error::msg)?;
        match c.reply() {
            Err(e) if !e.is_empty() => errors += 1,
            Err(_) => bail!("an empty error for {m:?}"),
            // A random text can spell a valid read (`state list`) or a change that
            // finds nothing to do: the tables are compared below either way.
            Ok(_) => {}
        }
    }
    // A non-root client. With the socket as created (0600) it cannot even connect;
    // opened up, the daemon's SO_PEERCRED check refuses it by name.
    let as_nobody = |ctl: &std::path::Path| -> Result<std::process::Output> {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&bin)
            .args(["xfrm", "--ctl"])
            .arg(ctl)
            .args(["state", "flush"])
            .uid(65534)
            .gid(65534)
            .output()
            .context("xfrm-user as nobody")
    };
    let o = as_nobody(&path)?;
    if o.status.success() {
        bail!("a non-root client reached a 0600 socket");
    }
    // For that: a link to the socket in a directory nobody can reach (its own, 0755,
    // on the same tmpfs as /run/xfrm-user, which is 0700) and the socket opened up
    // for the moment of the request.
    use std::os::unix::fs::PermissionsExt;
    let open_dir = tempfile::Builder::new()
        .prefix("xfrm-ctl-test-")
        .tempdir_in("/run")?;
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let link = open_dir.path().join("ctl");
    std::fs::hard_link(&path, &link)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    let o = as_nobody(&link);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let o = o?;
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.success() || !err.contains("root only (peer uid 65534)") {
        bail!("non-root client: {}: {err}", o.status);
    }
    let after = tables()?;
    if before != after {
        bail!("the tables changed:\nbefore:\n{before}\nafter:\n{after}");
    }
    for d in gws.iter_mut() {
        d.check_alive()?;
    }
    // Still forwarding.
    let pings = ping_both_ways(net, case, 3)?;
    Ok(format!(
        "bad requests: {errors} of 10000 random messages refused; {pings}"
    ))
}

#[test]
fn control_lifetimes_raise_events() {
    run(
        "control_lifetimes_raise_events",
        true,
        lifetimes_raise_events,
    );
}

/// Events from `mon` until `want` holds of what came (bounded); all of them.
fn events_until(mon: &mut Client, what: &str, want: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !want(&seen) {
        if Instant::now() > deadline {
            bail!("{what}: not in the events after 20 s: {seen}");
        }
        // Each event, or the receive timeout (then look again).
        if let Ok(e) = mon.next_event() {
            seen.push_str(&e);
        }
    }
    Ok(seen)
}

fn lifetimes_raise_events(net: &GatewayNet, case: &Case, gws: &mut [Daemon]) -> Result<String> {
    let mut mon = Client::connect(&gws[0].ctl_path()).map_err(anyhow::Error::msg)?;
    mon.monitor().map_err(anyhow::Error::msg)?;
    mon.set_timeout(Duration::from_millis(500))
        .map_err(anyhow::Error::msg)?;
    let host_a = net.topo.ns(case.traffic_ns(net, Side::A));
    let to_b = case.traffic_addr(net, Side::B);
    let states = lines_of(&case.config(net, Side::A), "state ");
    let ab_spi = case.bundle(net, Side::A)[0].spi;
    let mut out = String::new();
    // Phase p: the case's SAs under SPIs of their own, the one from A with `limits`.
    for (p, limits, pings) in [
        (0u32, "limit packet-soft 5 limit packet-hard 10", 14u32),
        (1, "limit byte-soft 2000 limit byte-hard 4000", 30),
        (2, "limit time-soft 2 limit time-hard 4", 0),
    ] {
        let mut batch = String::new();
        for line in states.lines() {
            let mut l = line.to_string();
            for x in [&case.bundle(net, Side::A)[0], &case.bundle(net, Side::B)[0]] {
                l = l.replace(
                    &format!("spi {:#010x}", x.spi),
                    &format!("spi {:#010x}", x.spi + 0x100 * p),
                );
            }
            if line.contains(&format!("spi {ab_spi:#010x}")) {
                l = format!("{l} {limits}");
            }
            batch.push_str(&l);
            batch.push('\n');
        }
        for d in gws.iter() {
            d.xfrm_ok(&["-batch", "-"], &batch)?;
        }
        let spi = format!("spi 0x{:08x}", ab_spi + 0x100 * p);
        // Traffic (one ping at a time, answered or not) until both events came.
        let hard = |ev: &str| {
            ev.split("Expired ")
                .any(|e| e.contains(&spi) && e.contains("\thard 1\n"))
        };
        let soft = |ev: &str| {
            ev.split("Expired ")
                .any(|e| e.contains(&spi) && e.contains("\thard 0\n"))
        };
        for _ in 0..pings {
            let _ = ping(host_a, to_b, 1, b'A');
        }
        let ev = events_until(&mut mon, &format!("phase {p} ({limits})"), |ev| {
            soft(ev) && hard(ev)
        })?;
        // The SA is gone after its hard expiry, as the kernel deletes it.
        let list = gws[0].xfrm_ok(&["state", "list"], "")?;
        if list.contains(&spi) {
            bail!("phase {p}: {spi} still listed after its hard expiry:\n{list}");
        }
        out.push_str(&format!(
            "phase {p} ({limits}): soft and hard expiry of {spi}; "
        ));
        if p == 0 {
            // Its flow now finds no SA: an acquire, and nothing in clear.
            let _ = ping(host_a, to_b, 2, b'A');
            events_until(&mut mon, "acquire after the hard expiry", |e| {
                e.contains("acquire proto esp")
            })?;
            out.push_str("then an acquire; ");
        }
        let _ = ev;
    }
    Ok(out)
}

#[test]
fn control_reload_applies_the_difference() {
    run(
        "control_reload_applies_the_difference",
        false,
        reload_applies_the_difference,
    );
}

/// The outbound SA's last sequence number, from `state list -j`.
fn oseq(d: &Daemon, spi: u32) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_str(&d.xfrm_ok(&["-j", "state", "list"], "")?)?;
    v.as_array()
        .and_then(|a| a.iter().find(|x| x["spi"] == spi))
        .and_then(|x| x["oseq"].as_u64())
        .with_context(|| format!("SA {spi:#x} in {v}"))
}

fn reload_applies_the_difference(
    net: &GatewayNet,
    case: &Case,
    gws: &mut [Daemon],
) -> Result<String> {
    wait_path(net, case, &mut || {
        for d in gws.iter_mut() {
            d.check_alive()?;
        }
        Ok(())
    })?;
    let out_spi = case.bundle(net, Side::A)[0].spi;
    let d = &mut gws[0];
    // An SA added at run time (a reqid no template names: unused).
    let extra = lines_of(&case.config(net, Side::A), "state ")
        .lines()
        .next()
        .context("a state line")?
        .replace(&format!("spi {out_spi:#010x}"), "spi 0x00007000")
        .replace(" reqid ", " reqid 9")
        + "\n";
    d.xfrm_ok(&["-batch", "-"], &extra)?;
    ping_both_ways(net, case, 3)?;
    let before = oseq(d, out_spi)?;
    // The file gains a policy: only that is applied.
    let original = std::fs::read_to_string(d.config_path())?;
    std::fs::write(
        d.config_path(),
        format!("{original}policy add src 10.99.0.0/16 dst 10.98.0.0/16 dir out action block\n"),
    )?;
    let r = d.reload()?;
    if !r.contains(
        "SAs 0 added, 0 changed, 0 deleted, 2 unchanged; policies 1 added, 0 changed, 0 deleted",
    ) {
        bail!("reload: {r}");
    }
    assert_eq!(d.xfrm_ok(&["state", "count"], "")?, "SAD count 3\n");
    assert_eq!(
        d.xfrm_ok(&["policy", "count"], "")?,
        "SPD IN  1 OUT 2 FWD 1\n"
    );
    let pings = ping_both_ways(net, case, 3)?;
    let after = oseq(d, out_spi)?;
    if after < before + 3 {
        bail!("the unchanged SA's sequence numbers did not go on: {before} then {after}");
    }
    // SIGHUP with the file as it was: the policy goes again, the run-time SA stays.
    std::fs::write(d.config_path(), &original)?;
    d.proc().signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.xfrm_ok(&["policy", "count"], "")? != "SPD IN  1 OUT 1 FWD 1\n" {
        if Instant::now() > deadline {
            bail!("SIGHUP: the policy is still there; log:\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.xfrm_ok(&["state", "count"], "")?, "SAD count 3\n");
    d.check_alive()?;
    Ok(format!(
        "{}oseq {before} before the reload, {after} after; {pings}",
        r.trim_end().to_string() + "; "
    ))
}
