//! `cargo xtask run`: the demo.
//!
//! Default: two gateways running `xfrm-user run` (see `demo.rs`).
//!
//! `--single`: the classifier alone, as before the workers landed:
//!
//!   ns host [a] ──veth── [b] ns gw: xfrm-user attach --xsk (XDP native + AF_XDP socket)
//!
//! The host sends, once a second: a ping (no policy: passes), UDP to port 5555 (protect:
//! redirected to the AF_XDP socket with its policy/SA ids), UDP to 6666 (block: dropped), and
//! IPv6 UDP to 5555 (block). xfrm-user prints the verdict counters and samples; Ctrl-C (or
//! --duration) stops it and the namespaces are deleted.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xfrm_tests::topology::{Topology, VethOpts};

use crate::{ebpf, setup, util};

pub static STOP: AtomicBool = AtomicBool::new(false);

pub extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn demo_config(a: &xfrm_tests::topology::Port, b: &xfrm_tests::topology::Port) -> String {
    // The tunnel's far end is a made-up address of the link's subnet: nothing is sent to it
    // yet (no worker), the state only gives the protect policy an SA id.
    let far = std::net::Ipv4Addr::new(b.ipv4.octets()[0], b.ipv4.octets()[1], 0, 9);
    format!(
        "# written by `cargo xtask run`\n\
         state add src {b4} dst {far} proto esp spi 0x100 reqid 1 mode tunnel \
         aead 'rfc4106(gcm(aes))' 0x0102030405060708091011121314151617181920 128\n\
         policy add src {a4}/32 dst {b4}/32 proto udp dport 5555 dir out priority 10 \
         tmpl src {b4} dst {far} proto esp reqid 1 mode tunnel\n\
         policy add src {a4}/32 dst {b4}/32 proto udp dport 6666 dir out priority 10 action block\n\
         policy add src {a6}/128 dst {b6}/128 proto udp dport 5555 dir out priority 10 action block\n",
        a4 = a.ipv4,
        b4 = b.ipv4,
        a6 = a.ipv6,
        b6 = b.ipv6,
    )
}

pub fn demo_single(duration: Option<u64>, xdp_mode: &str) -> Result<()> {
    if !util::is_root() {
        bail!("`cargo xtask run` needs root: it creates network namespaces and loads XDP");
    }
    setup::run(&[])?;
    ebpf::build(true)?;
    util::section("build xfrm-user");
    util::run(util::cargo().args(["build", "-p", "xfrm-user"]))?;
    let meta =
        util::output(util::cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    // The target directory, without a JSON dependency: "target_directory":"…".
    let target_dir = meta
        .split("\"target_directory\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("cargo metadata: no target_directory")?;
    let bin = std::path::Path::new(target_dir).join("debug/xfrm-user");

    util::section("demo topology");
    let mut topo = Topology::new()?;
    let host = topo.add_netns("host")?;
    let gw = topo.add_netns("gw")?;
    let link = topo.add_veth(host, gw, VethOpts::default())?;
    let (a, b) = (&link.a, &link.b);
    println!(
        "  {} [{} {} {}] ──veth── [{} {} {}] {}",
        topo.ns(host).name(),
        a.ifname,
        a.ipv4,
        a.ipv6,
        b.ifname,
        b.ipv4,
        b.ipv6,
        topo.ns(gw).name()
    );
    let conf = std::env::temp_dir().join(format!("xfrm-demo-{}.conf", topo.id()));
    xfrm_user::keyfile::write_private(&conf, demo_config(a, b))?;

    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic. xfrm-user, in our process group, gets
        // the same Ctrl-C and detaches itself; we then tear the topology down.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }

    let mut child = topo
        .ns(gw)
        .command(bin.to_str().context("binary path")?)
        .args([
            "attach",
            "--xsk",
            "--iface",
            &b.ifname,
            "--xdp-mode",
            xdp_mode,
            "--config",
        ])
        .arg(&conf)
        .env("XFRM_BPF_OBJ", ebpf::object_path(true))
        .stdin(Stdio::null())
        .spawn()
        .context("start xfrm-user")?;

    let start = Instant::now();
    let traffic = || -> Result<()> {
        topo.ns(host).run(|| {
            let s4 = UdpSocket::bind(SocketAddr::new(IpAddr::V4(a.ipv4), 0))?;
            let s6 = UdpSocket::bind(SocketAddr::new(IpAddr::V6(a.ipv6), 0))?;
            for port in [5555, 6666] {
                s4.send_to(b"demo", SocketAddr::new(IpAddr::V4(b.ipv4), port))?;
            }
            s6.send_to(b"demo", SocketAddr::new(IpAddr::V6(b.ipv6), 5555))?;
            Ok(())
        })?;
        Command::new("ip")
            .args([
                "netns",
                "exec",
                topo.ns(host).name(),
                "ping",
                "-c1",
                "-W1",
                "-q",
            ])
            .arg(b.ipv4.to_string())
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .status()?;
        Ok(())
    };
    // Let xfrm-user attach before the first packets.
    std::thread::sleep(Duration::from_millis(500));
    let mut result = Ok(());
    while !STOP.load(Ordering::Relaxed)
        && duration.is_none_or(|d| start.elapsed() < Duration::from_secs(d))
    {
        if let Some(status) = child.try_wait()? {
            result = Err(anyhow::anyhow!("xfrm-user exited early ({status})"));
            break;
        }
        if let Err(e) = traffic() {
            eprintln!("demo traffic: {e:#}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // `ip netns exec` exec()s the binary, so the child pid is xfrm-user itself.
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait()?;
    let _ = std::fs::remove_file(&conf);
    drop(topo);
    println!("demo: torn down (xfrm-user {status})");
    if result.is_ok() && !status.success() {
        bail!("xfrm-user failed ({status})");
    }
    result
}
