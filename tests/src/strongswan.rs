//! strongSwan's charon in the gateway namespaces, for the `strongswan_*` tests: one module for
//! what they share (the test CA, each site's `swanctl.conf` and `strongswan.conf`, charon's
//! start and stop, swanctl calls, the checks of charon against the datapath).
//!
//! Each charon has its own mount namespace (a private `/run` for its pid file), its own
//! `strongswan.conf` (`STRONGSWAN_CONF`), vici socket, log and credentials under a per-test
//! directory, and is ended by pid. With [`Kernel::XfrmUser`] it loads our `kernel-xfrmuser`
//! plugin (installed by `cargo xtask setup`) and drives the `xfrm-user run` of its namespace
//! through the control socket; the daemon's socket directory is bind-mounted into charon's
//! mount namespace before `/run` is covered.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    capture::{Capture, CaptureReport},
    daemon::{Daemon, RunArgs},
    gateway::{Case, Family, GatewayNet, Side},
    scenario::{heavy, report, wait_path},
    topology::{Netns, Proc},
};

pub const CHARON: &str = "/usr/lib/ipsec/charon";
pub const PLUGIN: &str = "/usr/lib/ipsec/plugins/libstrongswan-kernel-xfrmuser.so";

/// The plugins every charon here loads besides its kernel-ipsec one; `kdf` is needed for
/// the HMAC-SHA2 PRFs of IKEv2.
const PLUGINS: &str = "random nonce aes sha1 sha2 hmac kdf gcm pem pkcs1 pkcs8 x509 pubkey \
                       openssl gmp socket-default vici";

/// Which kernel-ipsec charon uses.
pub enum Kernel<'a> {
    /// Our datapath, through the control socket at this path.
    XfrmUser { ctl: &'a Path },
    /// strongSwan's own userspace ESP on a TUN device (the interop peer).
    Libipsec,
}

/// Fails with the way to get it when the plugin or a tool is not installed.
pub fn require_plugin() -> Result<()> {
    if !Path::new(CHARON).is_file() || !Path::new(PLUGIN).is_file() {
        bail!("{CHARON} or {PLUGIN} is missing: run `cargo xtask setup` (step strongswan)");
    }
    Ok(())
}

/// A strongSwan test: root (else a skip line), one heavy test at a time, the plugin and the
/// daemon's binary there; `body`'s error is the test's panic, its summary and time printed.
pub fn run_test(test: &str, body: impl FnOnce() -> Result<String>) {
    if !crate::root_or_skip(test) {
        return;
    }
    crate::init_logging();
    let _one = heavy();
    let t0 = Instant::now();
    let r = require_plugin().and_then(|()| {
        crate::daemon::xfrm_user_bin();
        body()
    });
    match r {
        Ok(summary) => {
            report(&format!("{test}: {summary}"));
            report(&format!("TIME {test}: {:.1?}", t0.elapsed()));
        }
        Err(e) => panic!("{test}: {e:#}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// How the gateways authenticate each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// A pre-shared key.
    Psk,
    /// Certificates of the test's [`Ca`], ECDSA P-256.
    Cert,
}

/// One site's IKE_SA `site` and CHILD_SA `lan` (a tunnel between the two LANs), and the
/// strongswan.conf lines of its charon.
#[derive(Clone, Debug)]
pub struct SiteConf {
    pub auth: Auth,
    /// `esp_proposals` of the CHILD_SA.
    pub esp: String,
    /// More lines in the CHILD_SA's section (`rekey_time = 5s`, `start_action = trap`).
    pub child: String,
    /// More lines in the connection's section (`encap = yes`, `dpd_delay = 2s`).
    pub conn: String,
    /// `remote_addrs = %any`: the peer's address is not known (it is behind a NAT).
    pub remote_any: bool,
    /// A drop shunt (`mode = drop`, trapped) over the same selectors: when the CHILD_SA goes
    /// (terminate, DPD, expiry) its policies go with it, and the shunt's block policies,
    /// installed below them, keep the LANs' traffic from leaving in clear.
    pub drop_shunt: bool,
    /// More lines in strongswan.conf's `charon { }` section.
    pub charon: String,
}

impl SiteConf {
    /// PSK, ESP AES-GCM-128.
    pub fn psk() -> Self {
        Self {
            auth: Auth::Psk,
            esp: "aes128gcm16".into(),
            child: String::new(),
            conn: String::new(),
            remote_any: false,
            drop_shunt: false,
            charon: String::new(),
        }
    }
    pub fn cert() -> Self {
        Self {
            auth: Auth::Cert,
            ..Self::psk()
        }
    }
    pub fn esp(mut self, proposals: &str) -> Self {
        self.esp = proposals.into();
        self
    }
    pub fn child(mut self, lines: &str) -> Self {
        self.child = lines.into();
        self
    }
    pub fn conn(mut self, lines: &str) -> Self {
        self.conn = lines.into();
        self
    }
    pub fn remote_any(mut self) -> Self {
        self.remote_any = true;
        self
    }
    pub fn drop_shunt(mut self) -> Self {
        self.drop_shunt = true;
        self
    }
    pub fn charon(mut self, lines: &str) -> Self {
        self.charon = lines.into();
        self
    }
}

/// The IKE identity of side `s`'s gateway.
pub fn gw_id(s: Side) -> &'static str {
    match s {
        Side::A => "gw-a",
        Side::B => "gw-b",
    }
}

/// swanctl.conf of side `s` (credentials, if any, are files beside it: [`Ca::install`]).
pub fn swanctl_conf(net: &GatewayNet, case: &Case, s: Side, c: &SiteConf) -> String {
    let me = Family::V4.addr(net.outside(s));
    let peer = if c.remote_any {
        "%any".to_string()
    } else {
        Family::V4.addr(net.outside(s.other())).to_string()
    };
    let (id, peer_id) = (gw_id(s), gw_id(s.other()));
    let local = case.selector(net, s);
    let remote = case.selector(net, s.other());
    let (auth, certs) = match c.auth {
        Auth::Psk => ("psk", String::new()),
        Auth::Cert => ("pubkey", format!("\n      certs = {id}.pem")),
    };
    let mut conf = format!(
        "connections {{
  site {{
    version = 2
    local_addrs = {me}
    remote_addrs = {peer}
    proposals = aes128gcm16-prfsha256-x25519
    {conn}
    local {{
      auth = {auth}
      id = {id}{certs}
    }}
    remote {{
      auth = {auth}
      id = {peer_id}
    }}
    children {{
      lan {{
        local_ts = {local}
        remote_ts = {remote}
        esp_proposals = {esp}
        mode = tunnel
        {child}
      }}
    }}
  }}
",
        conn = c.conn,
        esp = c.esp,
        child = c.child,
    );
    if c.drop_shunt {
        let _ = write!(
            conf,
            "  shunt {{
    children {{
      drop-lan {{
        local_ts = {local}
        remote_ts = {remote}
        mode = drop
        start_action = trap
      }}
    }}
  }}
"
        );
    }
    conf.push_str("}\n");
    if c.auth == Auth::Psk {
        conf.push_str(
            "secrets {
  ike-site {
    id-a = gw-a
    id-b = gw-b
    secret = \"xfrm-ebpf test key, not a secret\"
  }
}
",
        );
    }
    conf
}

// ---------------------------------------------------------------------------------------------
// The test CA

/// A CA made by the test with strongSwan's `pki` (ECDSA P-256, valid one day), which issues
/// the gateways' certificates; its directory is deleted on drop.
pub struct Ca {
    dir: PathBuf,
}

fn pki(args: &[&str]) -> Result<Vec<u8>> {
    let o = Command::new("pki")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("pki (Debian package strongswan-pki: `cargo xtask setup`)")?;
    if !o.status.success() {
        bail!(
            "pki {args:?}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(o.stdout)
}

/// A new ECDSA P-256 key in PEM at `path`.
fn new_key(path: &Path) -> Result<()> {
    let key = pki(&[
        "--gen",
        "--type",
        "ecdsa",
        "--size",
        "256",
        "--outform",
        "pem",
    ])?;
    std::fs::write(path, key)?;
    Ok(())
}

impl Ca {
    pub fn new(label: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("xfrm-sswan-ca-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ca = Self { dir };
        let key = ca.dir.join("ca.key");
        new_key(&key)?;
        let cert = pki(&[
            "--self",
            "--ca",
            "--lifetime",
            "1",
            "--type",
            "ecdsa",
            "--in",
            &key.display().to_string(),
            "--dn",
            "CN=xfrm-ebpf test CA",
            "--outform",
            "pem",
        ])?;
        std::fs::write(ca.dir.join("ca.pem"), cert)?;
        Ok(ca)
    }

    /// A key and a certificate for `id` (subject `CN=id`, subjectAltName `id`) into the
    /// swanctl directories under `dir` (`private/`, `x509/`), and the CA's certificate into
    /// `x509ca/`: what `swanctl --load-all --file dir/swanctl.conf` loads.
    pub fn install(&self, dir: &Path, id: &str) -> Result<()> {
        for d in ["private", "x509", "x509ca"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let key = dir.join("private").join(format!("{id}.key"));
        new_key(&key)?;
        let cert = pki(&[
            "--issue",
            "--cacert",
            &self.dir.join("ca.pem").display().to_string(),
            "--cakey",
            &self.dir.join("ca.key").display().to_string(),
            "--type",
            "priv",
            "--in",
            &key.display().to_string(),
            "--dn",
            &format!("CN={id}"),
            "--san",
            id,
            "--lifetime",
            "1",
            "--outform",
            "pem",
        ])?;
        std::fs::write(dir.join("x509").join(format!("{id}.pem")), cert)?;
        std::fs::copy(self.dir.join("ca.pem"), dir.join("x509ca/ca.pem"))?;
        Ok(())
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// charon

/// A running charon.
pub struct Charon {
    proc: Proc,
    dir: PathBuf,
    /// Killed by the test ([`Charon::kill9`]): its exit is no failure.
    killed: bool,
}

impl Charon {
    /// Starts charon in `ns` (`extra`: more lines in strongswan.conf's `charon { }`); waits
    /// (bounded) until its vici socket answers.
    pub fn start(ns: &Netns, label: &str, kernel: Kernel, extra: &str) -> Result<Self> {
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
  {extra}
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
      time_add_ms = yes
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
        let mut c = Self {
            proc,
            dir,
            killed: false,
        };
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

    /// Writes `conf` as the swanctl.conf of this charon and loads it all (with the
    /// credentials in the directories beside it).
    pub fn load(&self, conf: &str) -> Result<()> {
        let path = self.dir.join("swanctl.conf");
        std::fs::write(&path, conf)?;
        self.swanctl(&[
            "--load-all",
            "--noprompt",
            "--file",
            &path.display().to_string(),
        ])?;
        Ok(())
    }

    /// `swanctl --initiate --child lan`.
    pub fn initiate(&self) -> Result<()> {
        self.swanctl(&["--initiate", "--child", "lan", "--timeout", "30"])
            .context("initiate")?;
        Ok(())
    }

    /// The outbound SPI of the CHILD_SA `swanctl --list-sas` lists (the newest if several).
    pub fn out_spi(&self) -> Result<u32> {
        let list = self.swanctl(&["--list-sas"])?;
        list_sas_counters(&list)
            .into_iter()
            .filter(|x| !x.0)
            .map(|x| x.1)
            .next_back()
            .with_context(|| format!("no CHILD_SA in:\n{list}"))
    }

    /// charon's log file (`knl = 2`: every kernel-interface call).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if self.killed {
            return Ok(());
        }
        if let Some(st) = self.proc.try_wait() {
            bail!("charon exited ({st}):\n{}", self.log());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.proc.stop(libc::SIGTERM, Duration::from_secs(5))
    }

    /// SIGKILL: charon gone without a word to its peer (the DPD case).
    pub fn kill9(&mut self) -> std::process::ExitStatus {
        self.killed = true;
        self.proc.kill9()
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

// ---------------------------------------------------------------------------------------------
// Sites: a datapath and a charon per gateway

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

/// The gateways' datapaths and charons of a test, in the order they were started (side A
/// first); stopped in [`Sites::stop`], else by their guards.
#[derive(Default)]
pub struct Sites {
    pub gws: Vec<Daemon>,
    pub charons: Vec<Charon>,
}

impl Sites {
    /// `xfrm-user run` with an empty configuration and a charon with kernel-xfrmuser on side
    /// `s`, loaded with [`swanctl_conf`]; with [`Auth::Cert`], `ca` issues its certificate.
    pub fn start(
        &mut self,
        net: &GatewayNet,
        case: &Case,
        s: Side,
        label: &str,
        conf: &SiteConf,
        ca: Option<&Ca>,
    ) -> Result<()> {
        let d = start_datapath(net, s)?;
        let ctl = d.ctl_path();
        self.gws.push(d);
        let c = Charon::start(
            net.topo.ns(net.gw(s)),
            &format!("{label}-{s:?}").to_lowercase(),
            Kernel::XfrmUser { ctl: &ctl },
            &conf.charon,
        )?;
        if conf.auth == Auth::Cert {
            ca.context("Auth::Cert without a CA")?
                .install(c.dir(), gw_id(s))?;
        }
        let r = c.load(&swanctl_conf(net, case, s, conf));
        self.charons.push(c);
        r
    }

    /// Both sides with [`Sites::start`], `conf(side)` each.
    pub fn start_both(
        &mut self,
        net: &GatewayNet,
        case: &Case,
        label: &str,
        conf: impl Fn(Side) -> SiteConf,
        ca: Option<&Ca>,
    ) -> Result<()> {
        for s in [Side::A, Side::B] {
            self.start(net, case, s, label, &conf(s), ca)?;
        }
        Ok(())
    }

    /// Writes side `s`'s swanctl.conf anew and loads it (a changed connection replaces the
    /// old one for new CHILD_SAs).
    pub fn reload(&self, net: &GatewayNet, case: &Case, s: Side, conf: &SiteConf) -> Result<()> {
        self.charon(s).load(&swanctl_conf(net, case, s, conf))
    }

    pub fn charon(&self, s: Side) -> &Charon {
        &self.charons[s as usize]
    }
    pub fn gw(&self, s: Side) -> &Daemon {
        &self.gws[s as usize]
    }

    /// Fails if a datapath or a charon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for d in self.gws.iter_mut() {
            d.check_alive()?;
        }
        for c in self.charons.iter_mut() {
            c.check_alive()?;
        }
        Ok(())
    }

    /// gw-a's charon initiates the CHILD_SA; waits until the path answers both ways.
    pub fn initiate_and_wait(&mut self, net: &GatewayNet, case: &Case) -> Result<Duration> {
        self.charons[0].initiate()?;
        wait_path(net, case, &mut || self.check_alive())
    }

    /// The datapaths' and charons' logs, for a failure message.
    pub fn logs(&self) -> String {
        let mut logs = crate::scenario::daemon_logs(&self.gws.iter().collect::<Vec<_>>());
        for c in &self.charons {
            logs.push_str(&format!("\n--- charon {}:\n{}", c.dir().display(), c.log()));
        }
        logs
    }

    /// Stops the charons, then the datapaths, which must exit cleanly.
    pub fn stop(mut self) -> Result<()> {
        for c in self.charons.iter_mut() {
            c.stop();
        }
        for d in std::mem::take(&mut self.gws) {
            let st = d.stop();
            if !st.success() {
                bail!("stop: {st}");
            }
        }
        Ok(())
    }
}

/// Runs `body` with the sites it starts while `cap` watches the wire; then the capture must
/// show no protected traffic in clear, and the sites stop cleanly. On failure the error
/// carries the datapaths' and charons' logs.
pub fn with_sites<T>(
    case: &Case,
    cap: Capture,
    body: impl FnOnce(&mut Sites) -> Result<T>,
) -> Result<(T, CaptureReport)> {
    let mut sites = Sites::default();
    let r = body(&mut sites);
    let rep = cap.stop()?;
    let t = match r {
        Ok(t) => t,
        Err(e) => bail!("{e:#}\n{}", sites.logs()),
    };
    rep.assert_no_leak(&case.name);
    sites.stop()?;
    Ok((t, rep))
}

// ---------------------------------------------------------------------------------------------
// Checks

/// `swanctl --list-sas` of side `s` names `shown` (e.g. `ESP:AES_GCM_16-256`), and shows,
/// SPI by SPI, the bytes and packets that side's datapath counted (non-zero); returns the
/// outbound SPIs.
pub fn check_list_sas(sites: &Sites, s: Side, shown: &str) -> Result<u32> {
    let (c, d) = (sites.charon(s), sites.gw(s));
    let list = c.swanctl(&["--list-sas"])?;
    if !list.contains(shown) {
        bail!("expected a CHILD_SA with {shown} in:\n{list}");
    }
    let counters = list_sas_counters(&list);
    if counters.len() != 2 {
        bail!("expected one CHILD_SA (in and out) in:\n{list}");
    }
    let mut out = 0;
    for (inbound, spi, bytes, packets) in counters {
        let (b, p) = datapath_counters(d, spi)?;
        if b != bytes || p != packets || packets == 0 {
            bail!(
                "SPI {spi:#x} (in: {inbound}): swanctl says {bytes} bytes {packets} packets, \
                 the datapath {b} {p}:\n{list}"
            );
        }
        if !inbound {
            out = spi;
        }
    }
    Ok(out)
}

/// The bytes and packets the datapath counted on `spi` (`state list -s -j`).
pub fn datapath_counters(d: &Daemon, spi: u32) -> Result<(u64, u64)> {
    let ours = d.xfrm_ok(
        &["-j", "-s", "state", "list", "spi", &format!("{spi:#x}")],
        "",
    )?;
    let v: serde_json::Value = serde_json::from_str(&ours).context("state list -j")?;
    let cur = &v[0]["lifetime"]["current"];
    match (cur["bytes"].as_u64(), cur["packets"].as_u64()) {
        (Some(b), Some(p)) => Ok((b, p)),
        _ => bail!("no counters for SPI {spi:#x} in: {ours}"),
    }
}

/// A counter of the datapath's XDP/TC programs from its last counter line (`xdp inside:
/// … drop_block=3 | xdp outside: …`): `hook` `xdp inside`, `xdp outside` or `tc local`; 0
/// when absent (only nonzero ones are printed).
pub fn program_counter(d: &Daemon, hook: &str, name: &str) -> u64 {
    let log = d.log();
    log.lines()
        .rev()
        .find(|l| l.starts_with("xdp inside:"))
        .and_then(|line| counter_in_line(line, hook, name))
        .unwrap_or(0)
}

fn counter_in_line(line: &str, hook: &str, name: &str) -> Option<u64> {
    line.split(" | ")
        .find_map(|part| part.strip_prefix(hook)?.strip_prefix(':'))?
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// Pings from side `s`'s host, none of which may be answered.
pub fn all_lost(net: &GatewayNet, case: &Case, s: Side) -> Result<()> {
    let r = crate::traffic::ping(
        net.topo.ns(case.traffic_ns(net, s)),
        case.traffic_addr(net, s.other()),
        3,
        b'P',
    );
    match r {
        Err(e) if format!("{e:#}").contains(" 0 received") => Ok(()),
        Err(e) => bail!("pings from {s:?} with no CHILD_SA: {e:#}"),
        Ok(line) => bail!("pings from {s:?} got through with no CHILD_SA: {line}"),
    }
}

/// Every SPI of `spis` was seen on the wire.
pub fn check_spis_on_wire(rep: &CaptureReport, spis: &[u32]) -> Result<()> {
    for spi in spis {
        if rep.per_spi.get(spi).copied().unwrap_or(0) == 0 {
            bail!("no frame with SPI {spi:#x} on the wire: {}", rep.summary());
        }
    }
    Ok(())
}

/// How many SAs the datapath holds.
pub fn sa_count(d: &Daemon) -> Result<usize> {
    let count = d.xfrm_ok(&["state", "count"], "")?;
    count
        .trim()
        .strip_prefix("SAD count ")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("state count said {count:?}"))
}

/// Waits (up to `timeout`) until `cond` holds, checking the sites are alive; `what` names it
/// in the error.
pub fn wait_for(
    sites: &mut Sites,
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut(&Sites) -> Result<bool>,
) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        sites.check_alive()?;
        if cond(sites)? {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether an IPv4 packet is IKE: UDP from or to port 500 or 4500.
fn is_ike(ip: &[u8]) -> bool {
    let l4 = usize::from(ip.first().map_or(0, |b| b & 0x0f)) * 4;
    if ip.len() < l4 + 4 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return false;
    }
    let port = |i: usize| u16::from_be_bytes([ip[l4 + i], ip[l4 + i + 1]]);
    [port(0), port(2)].iter().any(|p| [500, 4500].contains(p))
}

/// The wire carried the hosts' traffic as IPsec only: besides IPsec frames, nothing but IKE
/// (UDP 500/4500), ICMP errors about IKE (a dead peer's port unreachable), ARP and IPv6
/// neighbour discovery. The kinds are counted for every frame; the first 32 non-IPsec
/// frames the capture keeps are looked into.
pub fn check_only_ipsec(rep: &CaptureReport) -> Result<()> {
    for (what, n) in &rep.other {
        let ok = matches!(
            what.as_str(),
            "ip proto 1" | "ip proto 17" | "ip proto 58" | "ethertype 0x0806"
        );
        if !ok {
            bail!("{n} frame(s) of {what} on the wire: {}", rep.summary());
        }
    }
    for f in &rep.other_samples {
        let Some((off, ..)) = crate::capture::parse(&f.data, &[]) else {
            continue;
        };
        let ip = &f.data[off..];
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            continue;
        }
        let l4 = usize::from(ip[0] & 0x0f) * 4;
        let ok = match ip[9] {
            17 => is_ike(ip),
            // An ICMP error quotes the packet it is about after its 8-byte header.
            1 => ip.get(l4 + 8..).is_some_and(is_ike),
            _ => true,
        };
        if !ok {
            bail!(
                "neither IKE nor about IKE on the wire: {}",
                crate::capture::hex(&ip[..ip.len().min(64)])
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{counter_in_line, list_sas_counters};

    #[test]
    fn reads_program_counters() {
        let line = "xdp inside: rx=14992 pass_arp_nd=2 drop_block=3 | xdp outside: rx=7 \
                    redirect_in=3 | tc local: rx=9";
        let find = |hook, name| counter_in_line(line, hook, name);
        assert_eq!(find("xdp inside", "drop_block"), Some(3));
        assert_eq!(find("xdp outside", "redirect_in"), Some(3));
        assert_eq!(find("xdp outside", "rx"), Some(7));
        assert_eq!(find("tc local", "drop_block"), None);
    }

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
