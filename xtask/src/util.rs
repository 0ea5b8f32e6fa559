use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repo root")
        .to_path_buf()
}

/// `.tools/` in the repo (gitignored): bpf-linker and the LLVM prefix it was built against.
pub fn tools_dir() -> PathBuf {
    repo_root().join(".tools")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The same cargo that runs us (stable), from the repo root, stdin closed so nothing can wait
/// for a prompt in CI.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root()).stdin(Stdio::null());
    cmd
}

/// A command line for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run to completion with inherited stdout/stderr; a non-zero exit is an error naming the
/// command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = show(cmd);
    println!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Run and capture stdout; a non-zero exit is an error with stderr in it.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = show(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo build --release -p xfrm-user` and the binary it made (the demo and the gateway
/// bench move real traffic through it).
pub fn build_xfrm_user_release() -> Result<PathBuf> {
    section("build xfrm-user (release)");
    run(cargo().args(["build", "--release", "-p", "xfrm-user"]))?;
    let meta = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let target_dir = meta
        .split("\"target_directory\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("cargo metadata: no target_directory")?;
    Ok(Path::new(target_dir).join("release/xfrm-user"))
}

pub fn section(title: &str) {
    println!("\n==> {title}");
}

/// Look a program up in PATH and in the sbin directories (root's tools live there and a CI
/// PATH may lack them).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
