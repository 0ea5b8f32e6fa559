//! strongSwan's charon in a gateway namespace, for the `strongswan_*` tests: each charon has
//! its own mount namespace (a private `/run` for its pid file), its own `strongswan.conf`
//! (`STRONGSWAN_CONF`), vici socket and log under a per-test directory, and is ended by pid.
//!
//! With [`Kernel::XfrmUser`] charon loads our `kernel-xfrmuser` plugin (installed by
//! `cargo xtask setup`) and drives the `xfrm-user run` of its namespace through the control
//! socket; the daemon's socket directory is bind-mounted into charon's mount namespace before
//! `/run` is covered.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    daemon::{Daemon, RunArgs},
    gateway::{Case, Family, GatewayNet, Side},
    topology::{Netns, Proc},
};

pub const CHARON: &str = "/usr/lib/ipsec/charon";
pub const PLUGIN: &str = "/usr/lib/ipsec/plugins/libstrongswan-kernel-xfrmuser.so";

/// The plugins every charon here loads besides its kernel-ipsec one; `kdf` is needed for
/// the HMAC-SHA2 PRFs of IKEv2.
const PLUGINS: &str = "random nonce aes sha1 sha2 hmac kdf gcm pem pkcs1 x509 pubkey \
                       openssl gmp socket-default vici";

/// Which kernel-ipsec charon uses.
pub enum Kernel<'a> {
    /// Our datapath, through the control socket at this path.
    XfrmUser { ctl: &'a Path },
    /// strongSwan's own userspace ESP on a TUN device (the interop peer).
    Libipsec,
}

/// A running charon.
pub struct Charon {
    proc: Proc,
    dir: PathBuf,
}

/// Fails with the way to get it when the plugin is not installed.
pub fn require_plugin() -> Result<()> {
    if !Path::new(CHARON).is_file() || !Path::new(PLUGIN).is_file() {
        bail!("{CHARON} or {PLUGIN} is missing: run `cargo xtask setup` (step strongswan)");
    }
    Ok(())
}

impl Charon {
    /// Starts charon in `ns`; waits (bounded) until its vici socket answers.
    pub fn start(ns: &Netns, label: &str, kernel: Kernel) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("xfrm-sswan-{}-{label}", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let d = dir.display();
        // kernel-libipsec sends through its TUN device by the routes charon installs (table
        // 220); our datapath needs none.
        let install_routes = matches!(kernel, Kernel::Libipsec);
        let (kernel_plugins, kernel_conf, prelude) = match kernel {
            Kernel::XfrmUser { ctl } => {
                let run_dir = ctl.parent().context("control socket directory")?;
                // The daemon makes it 0700 too; it may start after charon.
                std::fs::create_dir_all(run_dir)?;
                let name = ctl.file_name().context("control socket name")?;
                (
                    "kernel-xfrmuser kernel-netlink",
                    format!(
                        "kernel-xfrmuser {{\n socket = {d}/xfrm-user-run/{}\n }}",
                        name.to_string_lossy()
                    ),
                    format!(
                        "mkdir -p {d}/xfrm-user-run && mount --bind {} {d}/xfrm-user-run && ",
                        run_dir.display()
                    ),
                )
            }
            Kernel::Libipsec => (
                "kernel-libipsec kernel-netlink",
                String::new(),
                String::new(),
            ),
        };
        let conf = format!(
            "charon {{
  load = {kernel_plugins} {PLUGINS}
  install_routes = {install_routes}
  install_virtual_ip = no
  retransmit_tries = 3
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}
    {kernel_conf}
  }}
  filelog {{
    log {{
      path = {d}/charon.log
      time_format = %T
      default = 1
      knl = 2
      ike = 1
      flush_line = yes
    }}
  }}
}}
"
        );
        std::fs::write(dir.join("strongswan.conf"), conf)?;
        let script = format!(
            "{prelude}mount -t tmpfs tmpfs /run && exec env STRONGSWAN_CONF={d}/strongswan.conf \
             {CHARON}"
        );
        let mut cmd = ns.command("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
        let proc = Proc::spawn(label, cmd)?;
        let mut c = Self { proc, dir };
        c.wait_vici(Duration::from_secs(20))?;
        Ok(c)
    }

    fn wait_vici(&mut self, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.proc.try_wait() {
                bail!("charon exited ({st}): {}\n{}", self.proc.log(), self.log());
            }
            if self.swanctl(&["--stats"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "charon's vici socket did not answer in {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `swanctl ARGS… --uri unix://DIR/charon.vici` (from outside charon's namespaces: the
    /// socket is a file); its standard output.
    pub fn swanctl(&self, args: &[&str]) -> Result<String> {
        // The command comes first: swanctl's options belong to it.
        let o = Command::new("swanctl")
            .args(args)
            .arg("--uri")
            .arg(format!("unix://{}/charon.vici", self.dir.display()))
            .stdin(std::process::Stdio::null())
            .output()
            .context("swanctl")?;
        if !o.status.success() {
            bail!(
                "swanctl {args:?}: {}: {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Writes `conf` as the swanctl.conf of this charon and loads it all.
    pub fn load(&self, conf: &str) -> Result<()> {
        let path = self.dir.join("swanctl.conf");
        std::fs::write(&path, conf)?;
        self.swanctl(&["--load-all", "--file", &path.display().to_string()])?;
        Ok(())
    }

    /// charon's log file (`knl = 2`: every kernel-interface call).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.proc.try_wait() {
            bail!("charon exited ({st}):\n{}", self.log());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.proc.stop(libc::SIGTERM, Duration::from_secs(5))
    }
}

impl Drop for Charon {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The CHILD_SA's SPIs and counters as `swanctl --list-sas` prints them:
/// `in  c1234567,  1234 bytes,    10 packets, …` → (in?, spi, bytes, packets).
pub fn list_sas_counters(list: &str) -> Vec<(bool, u32, u64, u64)> {
    list.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (dir, rest) = l.split_once(' ')?;
            let inbound = match dir {
                "in" => true,
                "out" => false,
                _ => return None,
            };
            let mut parts = rest.split(',').map(str::trim);
            let spi = u32::from_str_radix(parts.next()?, 16).ok()?;
            let bytes = parts.next()?.strip_suffix(" bytes")?.trim().parse().ok()?;
            let packets = parts
                .next()?
                .strip_suffix(" packets")?
                .trim()
                .parse()
                .ok()?;
            Some((inbound, spi, bytes, packets))
        })
        .collect()
}

/// `xfrm-user run` on side `s` with an empty configuration.
pub fn start_datapath(net: &GatewayNet, s: Side) -> Result<Daemon> {
    let mut d = Daemon::start(
        net.topo.ns(net.gw(s)),
        &format!("xfrm-user-sswan-{s:?}").to_lowercase(),
        "# everything comes from charon\n",
        &RunArgs {
            inside: net.inside(s).ifname.clone(),
            outside: net.outside(s).ifname.clone(),
            xdp_mode: "native",
            queues: None,
            own_process_group: false,
            extra: Vec::new(),
        },
    )?;
    d.wait_attached(
        net.topo.ns(net.gw(s)),
        &[&net.inside(s).ifname],
        Duration::from_secs(30),
    )?;
    d.wait_ctl(Duration::from_secs(30))?;
    Ok(d)
}

/// swanctl.conf of side `s`: one IKE_SA to the other gateway, one CHILD_SA between the LANs.
///
/// `child` goes into the CHILD_SA's section (e.g. `rekey_time = 5s`).
pub fn swanctl_conf(net: &GatewayNet, case: &Case, s: Side, child: &str) -> String {
    let me = Family::V4.addr(net.outside(s));
    let peer = Family::V4.addr(net.outside(s.other()));
    let (id, peer_id) = match s {
        Side::A => ("gw-a", "gw-b"),
        Side::B => ("gw-b", "gw-a"),
    };
    format!(
        "connections {{
  site {{
    version = 2
    local_addrs = {me}
    remote_addrs = {peer}
    proposals = aes128gcm16-prfsha256-x25519
    local {{
      auth = psk
      id = {id}
    }}
    remote {{
      auth = psk
      id = {peer_id}
    }}
    children {{
      lan {{
        local_ts = {local}
        remote_ts = {remote}
        esp_proposals = aes128gcm16
        mode = tunnel
        {child}
      }}
    }}
  }}
}}
secrets {{
  ike-site {{
    id-a = gw-a
    id-b = gw-b
    secret = \"xfrm-ebpf test key, not a secret\"
  }}
}}
",
        local = case.selector(net, s),
        remote = case.selector(net, s.other()),
    )
}

/// `xfrm-user run` with an empty configuration and a charon with kernel-xfrmuser on side
/// `s`, the latter loaded with [`swanctl_conf`] (`child` in the CHILD_SA's section).
pub fn start_site(
    net: &GatewayNet,
    case: &Case,
    s: Side,
    label: &str,
    child: &str,
) -> Result<(Daemon, Charon)> {
    let d = start_datapath(net, s)?;
    let c = Charon::start(
        net.topo.ns(net.gw(s)),
        &format!("{label}-{s:?}").to_lowercase(),
        Kernel::XfrmUser { ctl: &d.ctl_path() },
    )?;
    c.load(&swanctl_conf(net, case, s, child))?;
    Ok((d, c))
}

/// The datapaths' and charons' logs, for a failure message.
pub fn logs(gws: &[Daemon], charons: &[Charon]) -> String {
    let mut logs = crate::scenario::daemon_logs(&gws.iter().collect::<Vec<_>>());
    for c in charons {
        logs.push_str(&format!("\n--- charon {}:\n{}", c.dir().display(), c.log()));
    }
    logs
}

/// Stops the charons, then the datapaths, which must exit cleanly.
pub fn stop_sites(charons: &mut [Charon], gws: Vec<Daemon>) -> Result<()> {
    for c in charons.iter_mut() {
        c.stop();
    }
    for d in gws {
        let st = d.stop();
        if !st.success() {
            bail!("stop: {st}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::list_sas_counters;

    #[test]
    fn reads_list_sas() {
        let out = "gw: #1, ESTABLISHED, IKEv2, 1c0c6ed5ce0ed84b_i* 6c4b4a0ac1f81b1e_r\n  \
                   net: #1, reqid 1, INSTALLED, TUNNEL, ESP:AES_GCM_16-128\n    \
                   installed 3s ago, rekeying in 3366s, expires in 3957s\n    \
                   in  c2e1c4f3,  16881 bytes,    20 packets,     0s ago\n    \
                   out c4d5ee2c,   1680 bytes,    20 packets,     1s ago\n    \
                   local  10.1.0.0/24\n";
        assert_eq!(
            list_sas_counters(out),
            vec![(true, 0xc2e1c4f3, 16881, 20), (false, 0xc4d5ee2c, 1680, 20)]
        );
    }
}
