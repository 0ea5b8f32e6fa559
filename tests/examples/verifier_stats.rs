//! Developer tool: load every program of the XDP object and print how much of the verifier's
//! budget (1M processed instructions) it took; on a rejection, the whole verifier log goes to
//! `$TMPDIR/xfrm-verifier-<program>.log` (its tail is what the kernel kept: rotating log).
//!
//! `cargo run -p xfrm-tests --example verifier_stats [-- OBJECT]` (root).

use aya::{programs::Xdp, EbpfLoader, VerifierLogLevel};

fn main() -> anyhow::Result<()> {
    let path = match std::env::args().nth(1) {
        Some(p) => p.into(),
        None => xfrm_tests::bpf_object(),
    };
    let bytes = std::fs::read(&path)?;
    let verbose = std::env::var_os("XFRM_VERIFIER_VERBOSE").is_some();
    let level = if verbose {
        VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS
    } else {
        VerifierLogLevel::STATS
    };
    let mut ebpf = EbpfLoader::new().verifier_log_level(level).load(&bytes)?;
    for name in [
        xfrm_common::PROG_CLASSIFY,
        xfrm_common::PROG_OUTSIDE,
        xfrm_common::PROG_PASS,
    ] {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow::anyhow!("no program {name}"))?
            .try_into()?;
        match prog.load() {
            Ok(()) => {
                let info = prog.info()?;
                println!(
                    "{name:<14} verified: {:>7} instructions processed (limit 1000000), {} \
                     instructions",
                    info.verified_instruction_count().unwrap_or(0),
                    info.size_translated().unwrap_or(0) / 8
                );
            }
            Err(e) => {
                let file = std::env::temp_dir().join(format!("xfrm-verifier-{name}.log"));
                std::fs::write(&file, format!("{e:?}"))?;
                println!("{name:<14} REJECTED: log in {}", file.display());
            }
        }
    }
    Ok(())
}
