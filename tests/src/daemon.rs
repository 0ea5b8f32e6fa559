//! The gateway daemon under test: `xfrm-user run --config FILE --inside IF --outside IF` in a
//! namespace, as a child process killed by pid when dropped.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
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
    /// stops its traffic first and the gateways after (a gateway that has stopped forwards
    /// whatever still comes in clear, as a plain router). Tests leave it false, so that a
    /// test run interrupted before its Drop guards ran takes the daemons with it.
    pub own_process_group: bool,
}

/// A running `xfrm-user run`.
pub struct Daemon {
    proc: Proc,
    config: PathBuf,
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
        let path = std::env::temp_dir().join(format!("xfrm-{}-{label}.conf", ns.name()));
        std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))?;
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
        let mut cmd = ns.command(bin.to_str().context("binary path")?);
        if args.own_process_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        cmd.args(&a).env("XFRM_BPF_OBJ", bpf).env(
            "RUST_LOG",
            std::env::var("XFRM_GW_LOG").unwrap_or_else(|_| "info".into()),
        );
        let proc = Proc::spawn(label, cmd)?;
        Ok(Self { proc, config: path })
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

    /// SIGINT (as Ctrl-C) and wait; the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.proc
            .stop(libc::SIGINT, std::time::Duration::from_secs(10))
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
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
