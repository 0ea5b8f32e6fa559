//! `cargo xtask setup`: each step checks first and installs only what is missing, so a second
//! run takes a second. A step that cannot install its piece fails with a message naming it.
//!
//! To add a step (e.g. a Python venv for the interop tests), write a `fn(&Ctx) -> Result<Done>`
//! and append it to [`STEPS`]; `--only NAME` runs a subset.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::util::{self, find_program, is_root, output, run as run_cmd, tools_dir};

pub struct Step {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn() -> Result<Done>,
}

/// What a step did.
pub enum Done {
    AlreadyThere(String),
    Installed(String),
    /// Could not install, but only optional things depend on it (e.g. not root: the root-only
    /// tests skip anyway).
    Skipped(String),
}

pub const STEPS: &[Step] = &[
    Step {
        name: "nightly",
        about: "the nightly toolchain that builds the eBPF crate",
        run: nightly,
    },
    Step {
        name: "rust-src",
        about: "rust-src for nightly (-Z build-std=core for bpfel-unknown-none)",
        run: rust_src,
    },
    Step {
        name: "bpf-linker",
        about: "bpf-linker 0.13 built against the nightly's own libLLVM, in .tools/",
        run: bpf_linker,
    },
    Step {
        name: "packages",
        about: "Debian packages the integration tests and the demo use (apt-get)",
        run: packages,
    },
    Step {
        name: "cargo-fuzz",
        about: "cargo-fuzz (libFuzzer driver) in .tools/cargo-fuzz, for cargo xtask fuzz",
        run: cargo_fuzz,
    },
    Step {
        name: "interop",
        about: "independent IPsec peers: Scapy + cryptography venv in .tools/venv, tshark",
        run: interop_peers,
    },
    Step {
        name: "strongswan",
        about: "Debian's charon + swanctl and our kernel-xfrmuser plugin built for them",
        run: crate::strongswan::step,
    },
];

pub fn run(only: &[String]) -> Result<()> {
    util::section("setup");
    for name in only {
        if !STEPS.iter().any(|s| s.name == name) {
            bail!("unknown setup step `{name}` (see `cargo xtask setup --list`)");
        }
    }
    let t0 = Instant::now();
    for step in STEPS
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.name))
    {
        let t = Instant::now();
        let done = (step.run)().with_context(|| format!("setup step `{}` failed", step.name))?;
        let (what, msg) = match done {
            Done::AlreadyThere(m) => ("ok", m),
            Done::Installed(m) => ("installed", m),
            Done::Skipped(m) => ("SKIPPED", m),
        };
        println!(
            "setup: {:<10} {what:<9} {msg} ({:.1?})",
            step.name,
            t.elapsed()
        );
    }
    println!("setup: done in {:.1?}", t0.elapsed());
    Ok(())
}

fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// `rustc +nightly`, without the toolchain override that `cargo run` passes down.
pub fn nightly_rustc() -> Command {
    let mut cmd = Command::new("rustc");
    cmd.arg("+nightly").env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// What `rustc +nightly -vV` says; the LLVM major decides bpf-linker's feature.
pub struct NightlyInfo {
    pub release: String,
    pub commit: String,
    pub llvm_version: String,
    pub llvm_major: u32,
    pub sysroot: PathBuf,
}

pub fn nightly_info() -> Result<NightlyInfo> {
    let vv = output(nightly_rustc().arg("-vV"))
        .context("the nightly toolchain is missing: run `cargo xtask setup`")?;
    let field = |k: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| anyhow!("`rustc +nightly -vV` printed no `{k}` line:\n{vv}"))
    };
    let llvm_version = field("LLVM version:")?;
    let llvm_major = llvm_version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the LLVM major from `{llvm_version}`"))?;
    let sysroot = PathBuf::from(output(nightly_rustc().args(["--print", "sysroot"]))?.trim());
    Ok(NightlyInfo {
        release: field("release:")?,
        commit: field("commit-hash:")?,
        llvm_version,
        llvm_major,
        sysroot,
    })
}

fn nightly() -> Result<Done> {
    if let Ok(info) = nightly_info() {
        return Ok(Done::AlreadyThere(format!(
            "rustc {} (LLVM {})",
            info.release, info.llvm_version
        )));
    }
    run_cmd(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"])).context(
        "the nightly toolchain is missing and `rustup toolchain install nightly` failed: \
         install a nightly Rust toolchain (the eBPF crate needs -Z build-std)",
    )?;
    let info = nightly_info()?;
    Ok(Done::Installed(format!("rustc {}", info.release)))
}

fn rust_src() -> Result<Done> {
    let info = nightly_info()?;
    let core = info
        .sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.is_file() {
        return Ok(Done::AlreadyThere(format!(
            "{}",
            core.parent().unwrap().display()
        )));
    }
    run_cmd(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"])).context(
        "missing piece: the rust-src component of the nightly toolchain \
         (`rustup component add rust-src --toolchain nightly` failed)",
    )?;
    if !core.is_file() {
        bail!("rust-src installed but {} is still missing", core.display());
    }
    Ok(Done::Installed("rust-src".into()))
}

pub const BPF_LINKER_VERSION: &str = "0.13";

/// Where the bpf-linker binary lands.
pub fn bpf_linker_root() -> PathBuf {
    tools_dir().join("bpf-linker")
}

/// The LLVM prefix bpf-linker was built against (symlinks into the nightly sysroot); it also
/// goes on LD_LIBRARY_PATH when bpf-linker runs.
pub fn llvm_prefix(major: u32) -> PathBuf {
    tools_dir().join(format!("llvm-{major}"))
}

fn bpf_linker() -> Result<Done> {
    let info = nightly_info()?;
    let root = bpf_linker_root();
    let bin = root.join("bin/bpf-linker");
    let stamp_path = root.join("stamp");
    // The stamp ties the binary to the exact nightly whose libLLVM it links: a new nightly
    // (new LLVM, new soname) rebuilds it.
    let stamp = format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm-{} rustc {} {}\n",
        info.llvm_major, info.release, info.commit
    );
    if bin.is_file() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(Done::AlreadyThere(format!("{}", bin.display())));
    }

    let prefix = llvm_prefix(info.llvm_major);
    let lib = prefix.join("lib");
    let (real, soname) = find_libllvm(&info.sysroot.join("lib"))?;
    fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&real, &link)
            .with_context(|| format!("symlink {} -> {}", link.display(), real.display()))?;
    }

    let feature = format!("llvm-{}", info.llvm_major);
    let mut cmd = util::cargo();
    cmd.args([
        "install",
        "bpf-linker",
        "--locked",
        "--force",
        "--version",
        &format!("~{BPF_LINKER_VERSION}"),
        "--no-default-features",
        "--features",
        &feature,
        "--root",
    ])
    .arg(&root)
    .env("LLVM_PREFIX", &prefix)
    // cargo install would otherwise build into the shared target dir and leave it there.
    .env_remove("CARGO_TARGET_DIR")
    .env_remove("RUSTUP_TOOLCHAIN");
    run_cmd(&mut cmd).with_context(|| {
        format!(
            "missing piece: bpf-linker {BPF_LINKER_VERSION} with feature `{feature}` \
             (the nightly's LLVM is {}; its libLLVM is {}). Needs crates.io and a C++ \
             toolchain; bpf-linker {BPF_LINKER_VERSION} knows llvm-21, llvm-22 and llvm-23 only",
            info.llvm_version,
            real.display()
        )
    })?;
    let version = output(bpf_linker_command(&info)?.arg("--version"))
        .context("bpf-linker was built but does not run")?;
    fs::write(&stamp_path, stamp)?;
    Ok(Done::Installed(version.trim().to_string()))
}

/// bpf-linker from `.tools/`, able to find the nightly's libLLVM.
pub fn bpf_linker_command(info: &NightlyInfo) -> Result<Command> {
    let bin = bpf_linker_root().join("bin/bpf-linker");
    if !bin.is_file() {
        bail!("missing piece: {} (run `cargo xtask setup`)", bin.display());
    }
    let mut cmd = Command::new(bin);
    cmd.env("LD_LIBRARY_PATH", ld_library_path(info));
    Ok(cmd)
}

pub fn ld_library_path(info: &NightlyInfo) -> std::ffi::OsString {
    let mut paths = vec![llvm_prefix(info.llvm_major).join("lib")];
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// The nightly's libLLVM shared object (the big regular file, not the linker script beside
/// it) and its soname.
fn find_libllvm(dir: &Path) -> Result<(PathBuf, String)> {
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if name.starts_with("libLLVM") && name.contains(".so") && meta.is_file() {
            let size = meta.len();
            if best.as_ref().is_none_or(|(s, _)| size > *s) {
                best = Some((size, entry.path()));
            }
        }
    }
    let (size, real) = best.ok_or_else(|| {
        anyhow!(
            "missing piece: no libLLVM*.so* in {} (the nightly toolchain ships one; \
             reinstall it with `rustup toolchain install nightly`)",
            dir.display()
        )
    })?;
    if size < 1 << 20 {
        bail!("{} is too small to be libLLVM", real.display());
    }
    let file_name = real.file_name().unwrap().to_string_lossy().into_owned();
    // The soname is what bpf-linker's ELF will ask the dynamic loader for; readelf (binutils)
    // tells it, the file name is the fallback (the same on rustup's toolchains).
    let soname = find_program("readelf")
        .and_then(|r| output(Command::new(r).arg("-d").arg(&real)).ok())
        .and_then(|d| {
            d.lines()
                .find(|l| l.contains("(SONAME)"))
                .and_then(|l| l.split('[').nth(1))
                .and_then(|s| s.split(']').next())
                .map(str::to_string)
        })
        .unwrap_or(file_name);
    Ok((real, soname))
}

/// (program, Debian package). iproute2: `ip netns`/veth; ethtool: the `tx off` tests;
/// iputils-ping: the unselected-flow check; tcpdump: looking at the demo's wire; iperf3:
/// `cargo xtask bench --gateway`; perf: its `--perf` (and the harness's test of it).
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("ping", "iputils-ping"),
    ("tcpdump", "tcpdump"),
    ("iperf3", "iperf3"),
    ("perf", "linux-perf"),
];

fn packages() -> Result<Done> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(prog, _)| find_program(prog).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    let all: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).collect();
    if missing.is_empty() {
        return Ok(Done::AlreadyThere(all.join(", ")));
    }
    if !is_root() {
        return Ok(Done::Skipped(format!(
            "not root, cannot install {}: `sudo apt-get install {}` (only the root-only \
             integration tests need them)",
            missing.join(", "),
            missing.join(" ")
        )));
    }
    apt_install(&missing)?;
    for (prog, pkg) in PACKAGES {
        if find_program(prog).is_none() {
            bail!("package {pkg} installed but `{prog}` is still not found");
        }
    }
    Ok(Done::Installed(missing.join(", ")))
}

/// `apt-get install` of `pkgs` (root only): without `apt-get update` first (fast when the
/// lists are fresh), then with it.
pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null());
        cmd
    };
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(pkgs);
    if run_cmd(&mut apt(&install)).is_err() {
        run_cmd(&mut apt(&["update", "-q"])).context("missing piece: `apt-get update` failed")?;
        run_cmd(&mut apt(&install))
            .with_context(|| format!("missing piece: apt-get install {}", pkgs.join(" ")))?;
    }
    Ok(())
}

/// The Scapy/tshark peers of the interop tests; tests/interop/setup.sh is idempotent and fast
/// when everything is in place.
fn interop_peers() -> Result<Done> {
    let script = util::repo_root().join("tests/interop/setup.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).stdin(std::process::Stdio::null());
    if !is_root() {
        // tshark comes from apt; without root only the venv can be made.
        cmd.arg("--no-tshark");
    }
    run_cmd(&mut cmd).context("missing piece: tests/interop/setup.sh failed (see its message)")?;
    Ok(Done::AlreadyThere(format!(
        "{} (scapy venv{})",
        script.display(),
        if is_root() {
            ", tshark"
        } else {
            "; tshark skipped: not root"
        }
    )))
}

/// cargo-fuzz, pinned, built with the stable cargo into .tools/cargo-fuzz.
fn cargo_fuzz() -> Result<Done> {
    const VERSION: &str = "0.13.2";
    let bin = crate::fuzz::cargo_fuzz();
    if bin.is_file() {
        if let Ok(v) = output(Command::new(&bin).args(["fuzz", "--version"])) {
            if v.contains(VERSION) {
                return Ok(Done::AlreadyThere(format!(
                    "{} {}",
                    bin.display(),
                    v.trim()
                )));
            }
        }
    }
    let root = tools_dir().join("cargo-fuzz");
    run_cmd(
        util::cargo()
            .args(["install", "--locked", "--version", VERSION, "--root"])
            .arg(&root)
            .arg("cargo-fuzz"),
    )
    .context("missing piece: cargo install cargo-fuzz")?;
    Ok(Done::Installed(format!(
        "cargo-fuzz {VERSION} in {}",
        root.display()
    )))
}
