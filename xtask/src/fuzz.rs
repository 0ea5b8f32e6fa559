//! `cargo xtask fuzz [--target T] [--seconds N]`: the libFuzzer targets of fuzz/harness, each
//! for N seconds from its seeds (fuzz/seeds/T) and its working corpus (fuzz/harness/corpus/T,
//! kept between runs, not checked in), then a table: executions, executions per second,
//! CPU seconds, coverage (edges and features libFuzzer counted) and crashes. A crash is
//! copied to fuzz/regressions/T/, which `cargo test` replays (fuzz/tests/replay.rs), and
//! fails the run.
//!
//! Long runs: `--campaign` appends each target's figures to fuzz/harness/campaign.log (kept
//! like the corpus), and `--report` prints what that log adds up to, per target, as the
//! table docs/fuzzing.md and the README give. `--sanitizer none` and `--jobs N` (libFuzzer's
//! fork mode) are for those; ASan in one process stays the default (CI's smoke run).

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::util::{self, repo_root, tools_dir};

/// The targets (fuzz/harness/fuzz_targets, xfrm_fuzz::TARGETS), in the order they run.
pub const TARGETS: [&str; 8] = [
    "input",
    "input_sealed",
    "output",
    "config",
    "pcap",
    "classifier",
    "neigh",
    "control",
];

/// Each target's dictionaries (fuzz/dict/NAME.dict), joined into one (libFuzzer takes one):
/// a control request's command is the configuration language.
const DICTS: [(&str, &[&str]); 2] = [("config", &["config"]), ("control", &["control", "config"])];

/// How a campaign run is built and run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// `cargo fuzz --sanitizer`: "address" (the default) or "none".
    pub sanitizer: Sanitizer,
    /// libFuzzer `-fork=N` when more than 1.
    pub jobs: u32,
    /// Append the figures to the campaign log.
    pub campaign: bool,
    /// `cargo fuzz build --dev`: no optimisation, so a fresh build takes a fraction of the
    /// time and each execution several times longer (CI's smoke run).
    pub dev: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sanitizer {
    Address,
    None,
}

impl Sanitizer {
    fn name(self) -> &'static str {
        match self {
            Sanitizer::Address => "address",
            Sanitizer::None => "none",
        }
    }
}

impl Default for Mode {
    fn default() -> Self {
        Self {
            sanitizer: Sanitizer::Address,
            jobs: 1,
            campaign: false,
            dev: false,
        }
    }
}

/// cargo-fuzz, installed by `cargo xtask setup` into .tools/cargo-fuzz.
pub fn cargo_fuzz() -> PathBuf {
    tools_dir().join("cargo-fuzz/bin/cargo-fuzz")
}

fn harness() -> PathBuf {
    repo_root().join("fuzz/harness")
}

fn campaign_log() -> PathBuf {
    harness().join("campaign.log")
}

/// fuzz/harness/target whatever CARGO_TARGET_DIR says (cargo sets it for us when the caller
/// has): flags differ from every other build. Without a sanitizer a directory of its own, as
/// switching flags in one would rebuild everything.
fn target_dir(mode: Mode) -> PathBuf {
    match (mode.sanitizer, mode.dev) {
        (Sanitizer::Address, false) => harness().join("target"),
        (Sanitizer::Address, true) => harness().join("target/dev"),
        (Sanitizer::None, false) => harness().join("target/nosan"),
        (Sanitizer::None, true) => harness().join("target/nosan-dev"),
    }
}

fn build_cmd(mode: Mode) -> Command {
    let mut c = Command::new(cargo_fuzz());
    // cargo-fuzz needs nightly (-Z sanitizer flags); `cargo run` of xtask sets stable.
    c.args([
        "fuzz",
        "build",
        "--sanitizer",
        mode.sanitizer.name(),
        "--fuzz-dir",
    ])
    .arg(harness())
    .args(mode.dev.then_some("--dev"))
    .arg("--target-dir")
    .arg(target_dir(mode))
    .env("RUSTUP_TOOLCHAIN", "nightly")
    .current_dir(repo_root())
    .stdin(Stdio::null());
    c
}

/// The fuzzer binary `cargo fuzz build` made. Run directly (not through `cargo fuzz run`,
/// which would build again if a source changed since): the CPU time measured is the
/// fuzzer's alone.
fn fuzzer(target: &str, mode: Mode) -> PathBuf {
    target_dir(mode)
        .join("x86_64-unknown-linux-gnu")
        .join(if mode.dev { "debug" } else { "release" })
        .join(target)
}

#[derive(Debug, Default)]
struct Outcome {
    target: String,
    seconds: f64,
    cpu_seconds: f64,
    execs: u64,
    per_sec: u64,
    cov: u64,
    ft: u64,
    crash: Option<PathBuf>,
}

/// Runs every target (or `only`) for `seconds` each; Err when a target crashed or did not
/// build.
pub fn run(only: Option<&str>, seconds: u64, mode: Mode) -> Result<()> {
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
    util::section(&format!(
        "cargo fuzz build (nightly, libFuzzer, sanitizer {})",
        mode.sanitizer.name()
    ));
    let t0 = Instant::now();
    util::run(&mut build_cmd(mode))?;
    println!("fuzz build: {:.0?}", t0.elapsed());
    let mut rows = Vec::new();
    for t in &targets {
        util::section(&format!("fuzz {t}: {seconds} s"));
        let r = run_one(t, seconds, mode)?;
        if mode.campaign {
            append_campaign(&r, mode)?;
        }
        rows.push(r);
    }
    println!(
        "\nfuzz: {seconds} s per target, sanitizer {}, {} job(s){}, on this machine",
        mode.sanitizer.name(),
        mode.jobs,
        if mode.dev { ", unoptimised" } else { "" }
    );
    println!(
        "{:<13} {:>12} {:>9} {:>7} {:>7} {:>8}  crashes",
        "target", "executions", "execs/s", "cpu s", "edges", "features"
    );
    let mut crashed = Vec::new();
    for r in &rows {
        println!(
            "{:<13} {:>12} {:>9} {:>7.0} {:>7} {:>8}  {}",
            r.target,
            r.execs,
            r.per_sec,
            r.cpu_seconds,
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

/// The dictionary for `target`: its files joined under fuzz/harness/target.
fn dictionary(target: &str) -> Result<Option<PathBuf>> {
    let Some((_, files)) = DICTS.iter().find(|(t, _)| *t == target) else {
        return Ok(None);
    };
    let mut text = String::new();
    for f in *files {
        let p = repo_root().join("fuzz/dict").join(format!("{f}.dict"));
        text.push_str(&fs::read_to_string(&p).with_context(|| p.display().to_string())?);
        text.push('\n');
    }
    let dir = harness().join("target");
    fs::create_dir_all(&dir)?;
    let out = dir.join(format!("{target}.dict"));
    fs::write(&out, text)?;
    Ok(Some(out))
}

/// CPU seconds of the children waited for so far (the fuzzer and, in fork mode, its jobs).
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given, which lives for the call.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn run_one(target: &str, seconds: u64, mode: Mode) -> Result<Outcome> {
    let root = repo_root();
    let corpus = harness().join("corpus").join(target);
    let seeds = root.join("fuzz/seeds").join(target);
    fs::create_dir_all(&corpus)?;
    let artifacts = harness().join("artifacts").join(target);
    fs::create_dir_all(&artifacts)?;
    let before: Vec<PathBuf> = list(&artifacts);
    let mut cmd = Command::new(fuzzer(target, mode));
    cmd.current_dir(&root)
        .stdin(Stdio::null())
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        // An input that takes 10 s is a hang, reported as a crash.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048");
    if mode.jobs > 1 {
        cmd.arg(format!("-fork={}", mode.jobs));
    }
    if let Some(dict) = dictionary(target)? {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    // New inputs go to the first directory.
    cmd.arg(&corpus).arg(&seeds);
    println!("+ {}", util::show(&cmd));
    let t0 = Instant::now();
    let cpu0 = children_cpu_seconds();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", fuzzer(target, mode).display()))?;
    let mut out = Outcome {
        target: target.to_string(),
        ..Default::default()
    };
    let stderr = child.stderr.take().context("stderr")?;
    let mut progress_execs = 0;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        // Progress lines: "#123456\tpulse  cov: 812 ft: 2301 corp: ...", in fork mode
        // "#123456: cov: 812 ft: 2301 corp: 97 exec/s: 5000 ...".
        if let Some(n) = progress(&line) {
            progress_execs = n;
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
    out.seconds = t0.elapsed().as_secs_f64();
    out.cpu_seconds = children_cpu_seconds() - cpu0;
    // Fork mode prints no final stats of the jobs' executions: its last progress line has
    // them.
    out.execs = out.execs.max(progress_execs);
    if out.per_sec == 0 && out.seconds >= 1.0 {
        out.per_sec = (out.execs as f64 / out.seconds) as u64;
    }
    let new: Vec<PathBuf> = list(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !status.success() || !new.is_empty() {
        let Some(first) = new.first() else {
            bail!("fuzz {target}: the fuzzer failed ({status}) without a crash input");
        };
        let keep = root.join("fuzz/regressions").join(target);
        fs::create_dir_all(&keep)?;
        let dst = keep.join(first.file_name().context("artifact name")?);
        fs::copy(first, &dst)?;
        out.crash = Some(dst);
    }
    Ok(out)
}

/// The execution count of a libFuzzer progress line ("#N\t…" or, in fork mode, "#N: …").
fn progress(line: &str) -> Option<u64> {
    let rest = line.strip_prefix('#')?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    if !rest[end..].starts_with(['\t', ':']) || !line.contains("cov:") {
        return None;
    }
    rest[..end].parse().ok()
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

/// One campaign log line: UTC time, target, sanitizer, jobs, wall seconds, CPU seconds,
/// executions, execs/s, edges, features, crashes, and the commit fuzzed (tab-separated;
/// "+" after it: with uncommitted changes).
fn append_campaign(r: &Outcome, mode: Mode) -> Result<()> {
    let when = util::output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?;
    let line = format!(
        "{}\t{}\t{}\t{}\t{:.0}\t{:.0}\t{}\t{}\t{}\t{}\t{}\t{}\n",
        when.trim(),
        r.target,
        mode.sanitizer.name(),
        mode.jobs,
        r.seconds,
        r.cpu_seconds,
        r.execs,
        r.per_sec,
        r.cov,
        r.ft,
        u8::from(r.crash.is_some()),
        tree()
    );
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(campaign_log())?;
    f.write_all(line.as_bytes())?;
    println!("campaign: appended to {}", campaign_log().display());
    Ok(())
}

/// The commit checked out, "+" when the work tree differs from it ("?" outside git).
fn tree() -> String {
    let root = repo_root();
    let head = util::output(Command::new("git").arg("-C").arg(&root).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]));
    let dirty = util::output(Command::new("git").arg("-C").arg(&root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]));
    match (head, dirty) {
        (Ok(h), Ok(d)) => format!("{}{}", h.trim(), if d.trim().is_empty() { "" } else { "+" }),
        _ => "?".into(),
    }
}

/// A target's figures summed over the campaign log.
#[derive(Debug, Default, PartialEq)]
struct Total {
    runs: u32,
    seconds: f64,
    cpu_seconds: f64,
    execs: u64,
    edges: u64,
    crashes: u64,
    /// The commits fuzzed, in the log's order (lines without one: before the log had them).
    trees: Vec<String>,
}

fn totals(log: &str) -> Vec<(String, Total)> {
    let mut out: Vec<(String, Total)> = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(&[_, target, _, _, secs, cpu, execs, _, edges, _, crashes]), tree) =
            (f.get(..11), f.get(11).copied().unwrap_or("-"))
        else {
            continue;
        };
        let i = match out.iter().position(|(t, _)| t == target) {
            Some(i) => i,
            None => {
                out.push((target.to_string(), Total::default()));
                out.len() - 1
            }
        };
        let t = &mut out[i].1;
        t.runs += 1;
        t.seconds += secs.parse::<f64>().unwrap_or(0.0);
        t.cpu_seconds += cpu.parse::<f64>().unwrap_or(0.0);
        t.execs += execs.parse::<u64>().unwrap_or(0);
        // The corpus is kept: a later run starts from what the earlier ones found.
        t.edges = t.edges.max(edges.parse().unwrap_or(0));
        t.crashes += crashes.parse::<u64>().unwrap_or(0);
        if !t.trees.iter().any(|x| x == tree) {
            t.trees.push(tree.to_string());
        }
    }
    out.sort_by_key(|(t, _)| TARGETS.iter().position(|x| x == t).unwrap_or(usize::MAX));
    out
}

/// `cargo xtask fuzz --report`: the campaign log summed per target, as a Markdown table
/// (regressions: the inputs kept in fuzz/regressions/T, each a crash that was fixed).
pub fn report() -> Result<()> {
    let log = fs::read_to_string(campaign_log()).with_context(|| {
        format!(
            "{}: no campaign yet (run `cargo xtask fuzz --campaign`)",
            campaign_log().display()
        )
    })?;
    println!("| target | runs | hours | executions | execs/s | execs per CPU-s | edges | crashes | regressions kept | commits |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for (target, t) in totals(&log) {
        let regressions = list(&repo_root().join("fuzz/regressions").join(&target)).len();
        println!(
            "| {target} | {} | {:.2} | {} | {:.0} | {:.0} | {} | {} | {regressions} | {} |",
            t.runs,
            t.seconds / 3600.0,
            t.execs,
            t.execs as f64 / t.seconds.max(1.0),
            t.execs as f64 / t.cpu_seconds.max(1.0),
            t.edges,
            t.crashes,
            t.trees.join(", ")
        );
    }
    Ok(())
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
        assert_eq!(progress(l), Some(524288));
        let fork = "#91234: cov: 900 ft: 2500 corp: 120 exec/s: 4000 oom/timeout/crash: 0/0/0 time: 20s job: 4 dft_time: 0";
        assert_eq!(progress(fork), Some(91234));
        assert_eq!(word_after(fork, "cov:"), Some(900));
        assert_eq!(progress("#0 READ units: 5"), None);
    }

    #[test]
    fn campaign_totals() {
        let log = "2026-12-06T22:00:00Z\tneigh\taddress\t1\t100\t95\t1000\t10\t50\t60\t0\n\
                   2026-12-06T23:00:00Z\tneigh\tnone\t1\t50\t50\t4000\t80\t55\t70\t0\n\
                   2026-12-06T23:00:00Z\tinput\taddress\t1\t10\t10\t100\t10\t900\t2000\t1\n\
                   2026-12-07T04:00:00Z\tneigh\tnone\t1\t10\t10\t10\t1\t55\t70\t0\ta264dcd\n";
        let t = totals(log);
        assert_eq!(t[0].0, "input");
        assert_eq!(t[1].0, "neigh");
        let n = &t[1].1;
        assert_eq!((n.runs, n.execs, n.edges, n.crashes), (3, 5010, 55, 0));
        assert_eq!((n.seconds, n.cpu_seconds), (160.0, 155.0));
        assert_eq!(n.trees, ["-", "a264dcd"]);
        assert_eq!(t[0].1.crashes, 1);
    }
}
