//! `cargo xtask fuzz [--target T] [--seconds N]`: the libFuzzer targets of fuzz/harness, each
//! for N seconds from its seeds (fuzz/seeds/T) and its working corpus (fuzz/harness/corpus/T,
//! kept between runs, not checked in), then a table: executions, executions per second,
//! coverage (edges and features libFuzzer counted) and crashes. A crash is copied to
//! fuzz/regressions/T/, which `cargo test` replays (fuzz/tests/replay.rs), and fails the run.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::util::{self, repo_root, tools_dir};

/// The targets (fuzz/harness/fuzz_targets, xfrm_fuzz::TARGETS), in the order they run.
pub const TARGETS: [&str; 7] = [
    "input",
    "input_sealed",
    "output",
    "config",
    "pcap",
    "classifier",
    "neigh",
];

/// cargo-fuzz, installed by `cargo xtask setup` into .tools/cargo-fuzz.
pub fn cargo_fuzz() -> PathBuf {
    tools_dir().join("cargo-fuzz/bin/cargo-fuzz")
}

fn harness() -> PathBuf {
    repo_root().join("fuzz/harness")
}

fn fuzz_cmd() -> Command {
    let mut c = Command::new(cargo_fuzz());
    // cargo-fuzz needs nightly (-Z sanitizer flags); `cargo run` of xtask sets stable.
    c.arg("fuzz")
        .env("RUSTUP_TOOLCHAIN", "nightly")
        .current_dir(repo_root())
        .stdin(Stdio::null());
    c
}

#[derive(Debug, Default)]
struct Outcome {
    target: String,
    execs: u64,
    per_sec: u64,
    cov: u64,
    ft: u64,
    crash: Option<PathBuf>,
}

/// Runs every target (or `only`) for `seconds` each; Err when a target crashed or did not
/// build.
pub fn run(only: Option<&str>, seconds: u64) -> Result<()> {
    if !cargo_fuzz().is_file() {
        bail!(
            "{} missing: run `cargo xtask setup --only cargo-fuzz`",
            cargo_fuzz().display()
        );
    }
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "unknown fuzz target `{t}`: expected one of {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    util::section("cargo fuzz build (nightly, ASan, libFuzzer)");
    util::run(fuzz_cmd().args(["build", "--fuzz-dir", harness().to_str().context("path")?]))?;
    let mut rows = Vec::new();
    for t in &targets {
        util::section(&format!("fuzz {t}: {seconds} s"));
        rows.push(run_one(t, seconds)?);
    }
    println!("\nfuzz: {seconds} s per target, on this machine");
    println!(
        "{:<13} {:>12} {:>9} {:>7} {:>8}  crashes",
        "target", "executions", "execs/s", "edges", "features"
    );
    let mut crashed = Vec::new();
    for r in &rows {
        println!(
            "{:<13} {:>12} {:>9} {:>7} {:>8}  {}",
            r.target,
            r.execs,
            r.per_sec,
            r.cov,
            r.ft,
            r.crash
                .as_ref()
                .map_or("0".to_string(), |p| format!("1 ({})", p.display()))
        );
        if r.crash.is_some() {
            crashed.push(r.target.clone());
        }
    }
    if !crashed.is_empty() {
        bail!(
            "crashes in {}: each input is saved under fuzz/regressions/<target>/ and replayed \
             by `cargo test -p xfrm-fuzz`",
            crashed.join(", ")
        );
    }
    Ok(())
}

fn run_one(target: &str, seconds: u64) -> Result<Outcome> {
    let root = repo_root();
    let corpus = harness().join("corpus").join(target);
    let seeds = root.join("fuzz/seeds").join(target);
    fs::create_dir_all(&corpus)?;
    let artifacts = harness().join("artifacts").join(target);
    fs::create_dir_all(&artifacts)?;
    let before: Vec<PathBuf> = list(&artifacts);
    let mut cmd = fuzz_cmd();
    cmd.args(["run", "--fuzz-dir"])
        .arg(harness())
        .arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        // An input that takes 10 s is a hang, reported as a crash.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048");
    let dict = root.join("fuzz/dict").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    println!("+ {}", util::show(&cmd));
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start cargo fuzz run")?;
    let mut out = Outcome {
        target: target.to_string(),
        ..Default::default()
    };
    let stderr = child.stderr.take().context("stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        // Progress lines: "#123456\tpulse  cov: 812 ft: 2301 corp: ..."
        if line.starts_with('#') {
            if let Some(c) = word_after(&line, "cov:") {
                out.cov = c;
            }
            if let Some(f) = word_after(&line, "ft:") {
                out.ft = f;
            }
        }
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            out.execs = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            out.per_sec = v.trim().parse().unwrap_or(0);
        }
        if line.contains("ERROR: libFuzzer") || line.contains("panicked at") {
            eprintln!("{line}");
        }
    }
    let status = child.wait()?;
    if out.per_sec == 0 && t0.elapsed().as_secs() > 0 {
        out.per_sec = out.execs / t0.elapsed().as_secs();
    }
    let new: Vec<PathBuf> = list(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !status.success() || !new.is_empty() {
        let Some(first) = new.first() else {
            bail!("fuzz {target}: cargo fuzz failed ({status}) without a crash input");
        };
        let keep = root.join("fuzz/regressions").join(target);
        fs::create_dir_all(&keep)?;
        let dst = keep.join(first.file_name().context("artifact name")?);
        fs::copy(first, &dst)?;
        out.crash = Some(dst);
    }
    Ok(out)
}

fn word_after(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()?.parse().ok()
}

fn list(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_words() {
        let l = "#524288\tpulse  cov: 812 ft: 2301 corp: 97/3210b lim: 4 exec/s: 26214 rss: 60Mb";
        assert_eq!(word_after(l, "cov:"), Some(812));
        assert_eq!(word_after(l, "ft:"), Some(2301));
        assert_eq!(word_after(l, "nope:"), None);
    }
}
