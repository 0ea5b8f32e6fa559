//! The gateway daemon under test: `xfrm-user run --config FILE --inside IF --outside IF` in a
//! namespace, as a child process killed by pid when dropped.
//!
//! Files: each daemon writes its own config file (a restarted daemon gets a new one, so the
//! guard of the old one, dropped later, deletes only its own). The state file is the
//! daemon's default (`/run/xfrm-user/netns-<inode>-<outside>.state`), shared by every daemon
//! started in that namespace on that interface, as a restart needs; it is deleted when the
//! last guard using it goes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, OnceLock,
    },
};

use anyhow::{bail, Context, Result};

use crate::topology::{Netns, Proc};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `xfrm-user` binary the gateway tests run: `$XFRM_USER_BIN`, else built here with
/// `cargo build --release -p xfrm-user` into the target directory of the running test (a
/// test crate cannot name another package's binary). Release, because the tests move
/// hundreds of MiB through it; the unoptimised build is ~10x slower in AES-GCM's portable
/// path and in the per-packet code.
pub fn xfrm_user_bin() -> PathBuf {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("XFRM_USER_BIN") {
            return Ok(PathBuf::from(p));
        }
        // <target>/<profile>/deps/<test binary>
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let target = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .ok_or("no target directory above the test binary")?
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "xfrm-user",
                "--bin",
                "xfrm-user",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(repo_root())
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !st.success() {
            return Err(format!("cargo build --release -p xfrm-user failed: {st}"));
        }
        let bin = target.join("release/xfrm-user");
        if bin.exists() {
            Ok(bin)
        } else {
            Err(format!("{} not found after the build", bin.display()))
        }
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// What `xfrm-user run` is started with.
#[derive(Clone, Debug)]
pub struct RunArgs {
    pub inside: String,
    pub outside: String,
    pub xdp_mode: &'static str,
    pub queues: Option<u32>,
    /// Run in a process group of its own, out of reach of the terminal's Ctrl-C: the demo
    /// stops its traffic first and the gateways after (a stopped gateway drops the protected
    /// traffic until [`Daemon::stop`] detaches its programs; from then on it would forward
    /// in clear, as a plain router). Tests leave it false, so that a test run interrupted
    /// before its Drop guards ran takes the daemons with it.
    pub own_process_group: bool,
    /// More arguments for `xfrm-user run` (the benchmark's hidden flag).
    pub extra: Vec<String>,
}

/// A running `xfrm-user run`.
pub struct Daemon {
    proc: Proc,
    config: PathBuf,
    state: PathBuf,
    ns: String,
    inside: String,
    outside: String,
    bin: PathBuf,
}

/// How many live guards use each state file.
fn state_users() -> &'static Mutex<HashMap<PathBuf, usize>> {
    static M: OnceLock<Mutex<HashMap<PathBuf, usize>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// The state file `xfrm-user run --outside IF` uses by default in namespace `ns`: named by
/// the namespace's inode (the one /proc/self/ns/net shows inside it) and the interface.
pub fn default_state_path(ns: &Netns, outside: &str) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/run/netns/{}", ns.name()))
        .with_context(|| format!("namespace {}", ns.name()))?
        .ino();
    Ok(PathBuf::from(format!(
        "/run/xfrm-user/netns-{ino}-{outside}.state"
    )))
}

/// What [`Daemon::stop`] saw.
#[derive(Debug)]
pub struct Stopped {
    pub status: std::process::ExitStatus,
    /// The interfaces whose XDP program was still attached after the exit (the fail-closed
    /// default), and those that had none.
    pub kept: Vec<String>,
    pub bare: Vec<String>,
    /// `xfrm-user detach` afterwards: its output, or why it failed (or left a program).
    pub detach: std::result::Result<String, String>,
}

impl Stopped {
    /// Exit 0, every program still attached when it exited, all of them detached after.
    pub fn success(&self) -> bool {
        self.status.success() && self.bare.is_empty() && self.detach.is_ok()
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; programs kept attached on {:?}",
            self.status, self.kept
        )?;
        if !self.bare.is_empty() {
            write!(f, ", NOT on {:?} (expected: kept, fail closed)", self.bare)?;
        }
        match &self.detach {
            Ok(o) => write!(f, "; detach: {}", o.trim().replace('\n', "; ")),
            Err(e) => write!(f, "; detach FAILED: {e}"),
        }
    }
}

impl Daemon {
    /// Writes `config` to a file and starts the daemon in `ns`. Returns at once: the test
    /// waits for traffic to flow (the daemon has no "ready" signal a test could wait on).
    pub fn start(ns: &Netns, label: &str, config: &str, args: &RunArgs) -> Result<Self> {
        Self::start_with(
            ns,
            label,
            config,
            args,
            &xfrm_user_bin(),
            &crate::bpf_object(),
        )
    }

    /// [`Daemon::start`] with an explicit binary and XDP object (the demo builds its own).
    pub fn start_with(
        ns: &Netns,
        label: &str,
        config: &str,
        args: &RunArgs,
        bin: &Path,
        bpf: &Path,
    ) -> Result<Self> {
        // One file per daemon: a restart must not share it with the guard it replaces.
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "xfrm-{}-{label}-{}.conf",
            ns.name(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        xfrm_user::keyfile::write_private(&path, config)
            .with_context(|| format!("write {}", path.display()))?;
        let state = default_state_path(ns, &args.outside)?;
        let mut a: Vec<String> = vec![
            "run".into(),
            "--config".into(),
            path.display().to_string(),
            "--inside".into(),
            args.inside.clone(),
            "--outside".into(),
            args.outside.clone(),
            "--xdp-mode".into(),
            args.xdp_mode.into(),
        ];
        if let Some(q) = args.queues {
            a.extend(["--queues".into(), q.to_string()]);
        }
        a.extend(args.extra.iter().cloned());
        let mut cmd = ns.command(bin.to_str().context("binary path")?);
        if args.own_process_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        cmd.args(&a).env("XFRM_BPF_OBJ", bpf).env(
            "RUST_LOG",
            std::env::var("XFRM_GW_LOG").unwrap_or_else(|_| "info".into()),
        );
        let proc = Proc::spawn(label, cmd);
        let proc = match proc {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        *state_users()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(state.clone())
            .or_default() += 1;
        Ok(Self {
            proc,
            config: path,
            state,
            ns: ns.name().to_string(),
            inside: args.inside.clone(),
            outside: args.outside.clone(),
            bin: bin.to_path_buf(),
        })
    }

    /// The state file the daemon uses (its default for this namespace and interface).
    pub fn state_path(&self) -> &Path {
        &self.state
    }

    /// The last value of an xfrm counter (`/proc/net/xfrm_stat` names) in the daemon's
    /// counter lines (0 when absent: only nonzero counters are printed).
    pub fn xfrm_counter(&self, name: &str) -> u64 {
        self.xfrm_counters()
            .into_iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| v)
    }

    /// Packets the workers took but did not pass on, from the last counter line: inside or
    /// local ones not sent to the wire, plus wire ones not delivered (whatever the reason:
    /// xfrm drops, no neighbour, no TX room).
    pub fn datapath_gap(&self) -> u64 {
        let log = self.proc.log();
        let Some(line) = log.lines().rev().find(|l| l.starts_with("out ")) else {
            return 0;
        };
        // "out X pkts + local Y -> wire Z, in A (reassembled B) -> inside C + local D, …"
        let n: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .take(7)
            .filter_map(|w| w.parse().ok())
            .collect();
        match n[..] {
            [x, y, z, a, _b, c, d] => (x + y).saturating_sub(z) + a.saturating_sub(c + d),
            _ => 0,
        }
    }

    /// Every nonzero xfrm counter of the daemon's last counter line.
    pub fn xfrm_counters(&self) -> Vec<(String, u64)> {
        let log = self.proc.log();
        let Some(line) = log.lines().rev().find(|l| l.starts_with("out ")) else {
            return Vec::new();
        };
        let Some((_, xfrm)) = line.split_once(" | ") else {
            return Vec::new();
        };
        let w: Vec<&str> = xfrm.split_whitespace().collect();
        w.chunks_exact(2)
            .filter_map(|p| Some((p[0].to_string(), p[1].parse().ok()?)))
            .collect()
    }

    /// Its control socket (the default: beside the state file).
    pub fn ctl_path(&self) -> PathBuf {
        self.state.with_extension("ctl")
    }

    /// Waits until the control socket answers (the daemon opens it last, once everything
    /// a request changes exists). Fails at once if the daemon exits.
    pub fn wait_ctl(&mut self, timeout: std::time::Duration) -> Result<()> {
        let start = std::time::Instant::now();
        loop {
            self.check_alive()?;
            if xfrm_user::ctl::client::Client::connect(&self.ctl_path()).is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{}: no control socket after {timeout:?}; log:\n{}",
                    self.proc.label(),
                    self.proc.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `xfrm-user xfrm --ctl SOCKET ARGS…` in the daemon's namespace, with `stdin` as its
    /// standard input (for `-batch -`: keys never on a command line).
    pub fn xfrm(&self, args: &[&str], stdin: &str) -> Result<std::process::Output> {
        self.client("xfrm", args, stdin)
    }

    /// `xfrm-user reload --ctl SOCKET`; its standard output.
    pub fn reload(&self) -> Result<String> {
        let o = self.client("reload", &[], "")?;
        if !o.status.success() {
            bail!(
                "xfrm-user reload: {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// `xfrm-user SUBCOMMAND --ctl SOCKET ARGS…` in the daemon's namespace.
    fn client(&self, sub: &str, args: &[&str], stdin: &str) -> Result<std::process::Output> {
        use std::io::Write;
        let ctl = self.ctl_path();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .args([sub, "--ctl"])
            .arg(&ctl)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("xfrm-user {sub}"))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        child
            .wait_with_output()
            .with_context(|| format!("xfrm-user {sub}"))
    }

    /// [`Self::xfrm`] that must succeed; its standard output.
    pub fn xfrm_ok(&self, args: &[&str], stdin: &str) -> Result<String> {
        let o = self.xfrm(args, stdin)?;
        if !o.status.success() {
            bail!(
                "xfrm-user xfrm {args:?}: {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn ifaces(&self) -> Vec<String> {
        let mut v = vec![self.inside.clone(), self.outside.clone()];
        v.dedup();
        v
    }

    fn attached(&self, ifname: &str) -> Result<bool> {
        let out = Command::new("ip")
            .args(["-n", &self.ns, "-d", "link", "show", "dev", ifname])
            .output()
            .context("ip link show")?;
        if !out.status.success() {
            bail!(
                "ip -n {} link show dev {ifname}: {}",
                self.ns,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(xdp_line(&String::from_utf8_lossy(&out.stdout)).is_some())
    }

    /// Waits until an XDP program is attached to each of `ifaces` (in `ns`): from then on the
    /// gateway, not the kernel's forwarding, decides about the traffic arriving there. Before
    /// it, the kernel forwards (ip_forward 1) what arrives in clear, as any router would: the
    /// tests send nothing until then. Fails at once if the daemon exits.
    pub fn wait_attached(
        &mut self,
        ns: &Netns,
        ifaces: &[&str],
        timeout: std::time::Duration,
    ) -> Result<std::time::Duration> {
        let start = std::time::Instant::now();
        loop {
            self.check_alive()?;
            let mut all = true;
            for i in ifaces {
                if !xdp_attached(ns, i)? {
                    all = false;
                }
            }
            if all {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{}: no XDP program on {ifaces:?} after {timeout:?}; log:\n{}",
                    self.proc.label(),
                    self.proc.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Fails if the daemon has exited (with its log).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.proc.try_wait() {
            bail!(
                "{} exited ({st}); its log:\n{}",
                self.proc.label(),
                self.proc.log()
            );
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// SIGINT (as Ctrl-C) and wait; then check that the XDP programs stayed attached (an
    /// orderly stop fails closed) and take them off with `xfrm-user detach`, so that nothing
    /// is left attached. See [`Stopped::success`].
    pub fn stop(mut self) -> Stopped {
        let status = self
            .proc
            .stop(libc::SIGINT, std::time::Duration::from_secs(10));
        let (mut kept, mut bare) = (Vec::new(), Vec::new());
        for i in self.ifaces() {
            match self.attached(&i) {
                Ok(true) => kept.push(i),
                _ => bare.push(i),
            }
        }
        let detach = self.detach();
        Stopped {
            status,
            kept,
            bare,
            detach,
        }
    }

    /// `xfrm-user detach --inside IF --outside IF` in the namespace; Ok(its output) when it
    /// succeeded and no program is left.
    fn detach(&self) -> std::result::Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .args([
                "detach",
                "--inside",
                &self.inside,
                "--outside",
                &self.outside,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("xfrm-user detach: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("xfrm-user detach: {}: {text}", out.status));
        }
        for i in self.ifaces() {
            if self.attached(&i).unwrap_or(true) {
                return Err(format!(
                    "{i}: still attached after `xfrm-user detach`: {text}"
                ));
            }
        }
        Ok(text)
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let mut users = state_users().lock().unwrap_or_else(|p| p.into_inner());
        let last = users.get_mut(&self.state).is_some_and(|n| {
            *n -= 1;
            *n == 0
        });
        if last {
            users.remove(&self.state);
            // The daemon is gone (Proc's guard dropped after this one would kill it; make
            // sure first): its lock and file go with the last guard.
            self.proc
                .stop(libc::SIGTERM, std::time::Duration::from_secs(5));
            let _ = std::fs::remove_file(&self.state);
            let mut lock = self.state.clone().into_os_string();
            lock.push(".lock");
            let _ = std::fs::remove_file(lock);
        }
    }
}

/// Whether `ip -d link show dev IF` in `ns` shows an XDP program (any mode).
pub fn xdp_attached(ns: &Netns, ifname: &str) -> Result<bool> {
    let out = ns.ip(&["-d", "link", "show", "dev", ifname])?;
    Ok(xdp_line(&String::from_utf8_lossy(&out.stdout)).is_some())
}

/// The `prog/xdp…` line of `ip -d link show`, if any.
pub fn xdp_line(ip_link: &str) -> Option<String> {
    ip_link
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("prog/xdp"))
        .map(str::to_string)
}
