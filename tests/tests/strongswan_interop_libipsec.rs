//! Interop with an ESP we did not write: gw-a runs our datapath driven by charon through
//! kernel-xfrmuser; gw-b runs stock charon with strongSwan's own userspace ESP
//! (kernel-libipsec, Debian's plugin, on a TUN device). kernel-libipsec receives ESP only
//! in UDP, so gw-b asks for encapsulation (`encap = yes`) and both ends send ESP in UDP
//! 4500. Pings and a TCP transfer each way arrive whole, then a rekey from each side and
//! the same again; nothing in clear on the wire.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging, root_or_skip,
    scenario::{heavy, ping_both_ways, report, transfers_both_ways, wait_path, wire_capture},
    strongswan::{logs, require_plugin, start_site, stop_sites, swanctl_conf, Charon, Kernel},
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
    let test = "strongswan_interop_libipsec";
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let _one = heavy();
    if let Err(e) = interop_libipsec() {
        panic!("{test}: {e:#}");
    }
}

/// The outbound SPIs gw-a's charon lists.
fn out_spi(c: &Charon) -> Result<u32> {
    let list = c.swanctl(&["--list-sas"])?;
    xfrm_tests::strongswan::list_sas_counters(&list)
        .into_iter()
        .find(|x| !x.0)
        .map(|x| x.1)
        .with_context(|| format!("no CHILD_SA in:\n{list}"))
}

fn interop_libipsec() -> Result<()> {
    let t0 = Instant::now();
    require_plugin()?;
    xfrm_tests::daemon::xfrm_user_bin();
    let case = case();
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let mut gws = Vec::new();
    let mut charons = Vec::new();
    let r = (|| -> Result<String> {
        let (d, a) = start_site(&net, &case, Side::A, "charon-interop", "")?;
        gws.push(d);
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
        )?;
        let conf = swanctl_conf(&net, &case, Side::B, "").replacen(
            "    version = 2\n",
            "    version = 2\n    encap = yes\n",
            1,
        );
        b.load(&conf)?;
        charons.push(a);
        charons.push(b);
        charons[0]
            .swanctl(&["--initiate", "--child", "lan", "--timeout", "30"])
            .context("initiate")?;
        let mut alive = || -> Result<()> {
            for d in gws.iter_mut() {
                d.check_alive()?;
            }
            Ok(())
        };
        let up = wait_path(&net, &case, &mut alive)?;
        let size = xfrm_tests::scenario::transfer_size(8);
        let pings = ping_both_ways(&net, &case, 5)?;
        let [ra, rb] = transfers_both_ways(&net, &case, size, 5800)?;
        let first = out_spi(&charons[0])?;
        let mut out = format!("up {up:.1?}; {pings}A->B {ra}; B->A {rb}");
        // A rekey from each side; traffic again after each.
        for (i, who) in [0usize, 1].into_iter().enumerate() {
            let before = out_spi(&charons[0])?;
            charons[who]
                .swanctl(&["--rekey", "--child", "lan"])
                .with_context(|| format!("rekey from charon {who}"))?;
            let end = Instant::now() + Duration::from_secs(20);
            while out_spi(&charons[0])? == before {
                if Instant::now() > end {
                    bail!("the rekey from charon {who} did not replace SPI {before:#x}");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            wait_path(&net, &case, &mut alive)?;
            let [ra, rb] = transfers_both_ways(&net, &case, size, 5810 + 2 * i as u16)?;
            out.push_str(&format!(
                "; after the rekey from gw-{}: A->B {ra}; B->A {rb}",
                if who == 0 { 'a' } else { 'b' }
            ));
        }
        let last = out_spi(&charons[0])?;
        if last == first {
            bail!("the SPI never changed");
        }
        Ok(out)
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
    if rep.per_spi.len() < 6 {
        bail!("expected three SPI pairs on the wire: {}", rep.summary());
    }
    stop_sites(&mut charons, gws)?;
    report(&format!(
        "TIME strongswan_interop_libipsec: {:.1?}",
        t0.elapsed()
    ));
    Ok(())
}
