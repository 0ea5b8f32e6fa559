//! `cargo xtask bench`, the transform part: `cargo bench -p xfrm-user --features
//! aws-lc-peer` (criterion, then the
//! paired measurements against ring), echoed as it runs, and its summary lines collected
//! to be printed again at the very end (`print_summary`), the acceptance line
//! `ratio_vs_ring_1400=<x>` last.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::util;

/// The line the acceptance reads, last in the summary.
const ACCEPTANCE: &str = "ratio_vs_ring_1400=";

/// Is this one of the benches' summary lines: `ratio_*=x` or `*_ns_<size> ...`?
fn is_summary(line: &str) -> bool {
    let first = line.split([' ', '=']).next().unwrap_or("");
    (line.starts_with("ratio_") && line.contains('='))
        || (first.contains("_ns_")
            && first
                .rsplit('_')
                .next()
                .is_some_and(|s| s.parse::<u32>().is_ok()))
        || line.starts_with("timer_ns=")
}

/// Runs `cargo bench -p xfrm-user [args]`, echoing its output; returns its summary lines in
/// order, each once, with the acceptance line moved to the end. Fails when the benches
/// fail or print no acceptance line (unless `args` chose other benches).
pub fn transform(args: &[String]) -> Result<Vec<String>> {
    let mut cmd = util::cargo();
    // aws-lc-peer: AWS-LC as the peer of the enc + auth and ChaCha20-Poly1305 benches.
    cmd.args(["bench", "-p", "xfrm-user", "--features", "aws-lc-peer"])
        .args(args);
    println!("$ {}", util::show(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo bench")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo bench output")?;
        println!("{line}");
        if is_summary(&line) {
            lines.push(line);
        }
    }
    let status = child.wait().context("waiting for cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }
    let summary = summarize(lines);
    if args.is_empty() && !summary.last().is_some_and(|l| l.starts_with(ACCEPTANCE)) {
        bail!("the transform bench printed no `{ACCEPTANCE}<x>` line");
    }
    Ok(summary)
}

/// Each line once (first occurrence), the acceptance line last.
fn summarize(lines: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut acceptance = None;
    for l in lines {
        if l.starts_with(ACCEPTANCE) {
            acceptance = Some(l);
        } else if !out.contains(&l) {
            out.push(l);
        }
    }
    out.extend(acceptance);
    out
}

/// The collected lines under a heading; call it last so that `ratio_vs_ring_1400=<x>` is
/// the last line of the whole run.
pub fn print_summary(lines: &[String]) {
    util::section("bench summary (ours/ring throughput: >1 is faster than ring)");
    for l in lines {
        println!("{l}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_and_order() {
        let out = [
            "Benchmarking transform/esp_tunnel_aes128gcm/64: Warming up for 1.0000 s",
            "transform/esp_tunnel_aes128gcm/64",
            "                        time:   [90.1 ns 91.0 ns 92.2 ns]",
            "timer_ns=18.0",
            "esp_ns_64 ring=70.1 ours=60.2 overhead=-9.9",
            "ratio_vs_ring_64=1.164",
            "esp_ns_1400 ring=230.0 ours=190.0 overhead=-40.0",
            "ratio_vs_ring_1400=1.211",
            "ah_ns_64 ring_hmac=240.0 ours=250.0",
            "ratio_ah_vs_ring_hmac_64=0.960",
            "ratio_vs_ring_1400=1.211",
            "seal_ns_64 ring=68.0 GcmKey=22.8 portable=122.1",
            "ratio_GcmKey_vs_ring_64=2.982",
        ];
        let kept: Vec<String> = out
            .iter()
            .filter(|l| is_summary(l))
            .map(|l| l.to_string())
            .collect();
        let s = summarize(kept);
        assert_eq!(
            s,
            [
                "timer_ns=18.0",
                "esp_ns_64 ring=70.1 ours=60.2 overhead=-9.9",
                "ratio_vs_ring_64=1.164",
                "esp_ns_1400 ring=230.0 ours=190.0 overhead=-40.0",
                "ah_ns_64 ring_hmac=240.0 ours=250.0",
                "ratio_ah_vs_ring_hmac_64=0.960",
                "seal_ns_64 ring=68.0 GcmKey=22.8 portable=122.1",
                "ratio_GcmKey_vs_ring_64=2.982",
                "ratio_vs_ring_1400=1.211",
            ]
        );
    }
}
