//! `cargo xtask build-ebpf`: the XDP object, built by nightly for bpfel-unknown-none with
//! `-Z build-std=core`, linked by the bpf-linker from `.tools/`.

use std::{ffi::OsString, path::PathBuf};

use anyhow::{Context, Result};

use crate::{setup, util};

/// The object the loader and the tests find by default
/// (`xfrm_user::datapath::loader::default_object_path` points here).
pub fn object_path(release: bool) -> PathBuf {
    util::repo_root()
        .join("xfrm-ebpf/target/bpfel-unknown-none")
        .join(if release { "release" } else { "debug" })
        .join("xfrm-ebpf")
}

pub fn build(release: bool) -> Result<PathBuf> {
    util::section("build-ebpf");
    let info = setup::nightly_info()?;
    // Fails with "missing piece: …" when setup has not run.
    setup::bpf_linker_command(&info)?;

    let mut path = vec![setup::bpf_linker_root().join("bin")];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));

    // What aya-build passes: the arch cfg aya-ebpf wants, BTF for the maps.
    let arch = std::env::consts::ARCH;
    let rustflags: OsString =
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf").into();

    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(util::repo_root().join("xfrm-ebpf"))
        .stdin(std::process::Stdio::null())
        .args(["+nightly", "build", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core"])
        .args(release.then_some("--release"))
        .env("PATH", std::env::join_paths(path)?)
        .env("LD_LIBRARY_PATH", setup::ld_library_path(&info))
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The eBPF crate keeps its own target dir (xfrm-ebpf/target): a different target and
        // toolchain than the user-space crates, and worktrees must not share one object.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS");
    util::run(&mut cmd).context("building the eBPF crate failed")?;
    let obj = object_path(release);
    anyhow::ensure!(obj.is_file(), "the build left no {}", obj.display());
    Ok(obj)
}
