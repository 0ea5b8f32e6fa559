//! Finding the XDP object at run time, not embedded: `cargo build`/`clippy` of the user-space
//! crates then works on a machine without nightly or bpf-linker. Order: `--bpf PATH`, then
//! `$XFRM_BPF_OBJ`, then `xfrm-ebpf.o` beside the executable (deployments), then the output of
//! `cargo xtask build-ebpf` in this source tree.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub const ENV_BPF_OBJ: &str = "XFRM_BPF_OBJ";

/// Where `cargo xtask build-ebpf` leaves the object in this source tree.
pub fn default_object_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../xfrm-ebpf/target/bpfel-unknown-none/release/xfrm-ebpf")
}

/// The object to load: the first of `explicit`, `$XFRM_BPF_OBJ`, `xfrm-ebpf.o` next to the
/// executable, the build output; an error lists what was tried.
pub fn resolve_object(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--bpf {}: no such file", p.display());
    }
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(ENV_BPF_OBJ) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("${ENV_BPF_OBJ}={}: no such file", p.display());
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        tried.push(dir.join("xfrm-ebpf.o"));
    }
    tried.push(default_object_path());
    for p in &tried {
        if p.is_file() {
            return Ok(p.clone());
        }
    }
    bail!(
        "no XDP object: build it with `cargo xtask build-ebpf`, or give --bpf PATH / ${ENV_BPF_OBJ} \
         (tried {})",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
