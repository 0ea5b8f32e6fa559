//! The xfrm-user command: one subcommand per mode. Each subcommand has its own argument struct
//! and a function in the library, so adding one (`pcap`, `run`, …) is a variant, an Args
//! struct and a match arm.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "xfrm-user",
    version,
    about = "IPsec (XFRM) datapath beside the kernel"
)]
struct Cli {
    /// More logging: -v info, -vv debug, -vvv trace (without -v, RUST_LOG is used).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse and validate a configuration file (ip xfrm state/policy add lines); exit 0 when
    /// it is valid, 2 (after printing every error) when it is not.
    Check(CheckArgs),
    /// Run the transforms over a capture: --dir out turns plaintext into what the wire
    /// carries (ESP/AH), copies packets without a policy, drops blocked ones; --dir in
    /// verifies and decrypts ESP/AH (tunnel: the inner packet), copies what is not IPsec,
    /// drops what fails a check; a summary and the non-zero /proc/net/xfrm_stat counters go
    /// to stderr.
    Pcap(PcapArgs),
    /// The gateway: the classifier on the inside interface, one AF_XDP worker per queue
    /// running the transforms, L2 from the kernel's tables; counters every --interval until
    /// Ctrl-C. Inside may equal outside (one-armed). The XDP programs stay attached when it
    /// stops (fail closed: protected traffic is dropped until it runs again); see `detach`.
    Run(RunArgs),
    /// Talk to a running gateway with ip xfrm's words: `xfrm-user xfrm state add …`,
    /// `state delete|get|list|flush|count|allocspi|update`, `policy add|delete|get|list|
    /// flush|count|update`, `monitor`; `-batch FILE` (or `-`) sends one request per line, so
    /// that keys stay out of the command line.
    Xfrm(XfrmArgs),
    /// Make a running gateway re-read its configuration file and apply what changed in it,
    /// as one atomic change (SIGHUP does the same). What was added through `xfrm-user xfrm`
    /// stays; SAs and policies the file did not change keep their counters and sequence
    /// numbers.
    Reload(ReloadArgs),
    /// Take the XDP programs a stopped or killed `run` left attached off the interfaces
    /// (only xfrm-user's own programs; another program is refused). The kernel then routes
    /// the protected flows, in clear unless its own xfrm protects them.
    Detach(DetachArgs),
    /// What this kernel and these interfaces offer the datapath (XDP native/skb, AF_XDP
    /// copy/zero-copy, the helpers the programs call, TC, TAP, queues): a table and a
    /// verdict; exit 0 when `run` will work. Attaches a pass-everything program and binds an
    /// AF_XDP socket for a moment on interfaces that have no XDP program yet (root).
    Doctor(DoctorArgs),
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// The inside interface `run` will use.
    #[arg(long, value_name = "IF")]
    inside: String,
    /// The outside interface `run` will use (the same as inside: one-armed).
    #[arg(long, value_name = "IF")]
    outside: String,
    /// The XDP mode `run` will be given (default: whichever works, native first).
    #[arg(long)]
    xdp_mode: Option<xfrm_user::datapath::AttachMode>,
    /// The queues `run` will serve.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// The XDP object (as for `run`).
    #[arg(long, value_name = "PATH")]
    bpf: Option<PathBuf>,
    /// As `run --no-local`: skip the TAP check.
    #[arg(long)]
    no_local: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("ifaces").required(true).multiple(true)))]
struct DetachArgs {
    /// The inside interface of `run`.
    #[arg(long, value_name = "IF", group = "ifaces")]
    inside: Option<String>,
    /// The outside interface of `run`.
    #[arg(long, value_name = "IF", group = "ifaces")]
    outside: Option<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The configuration file (ip xfrm state/policy add lines).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// The inside (plaintext) interface.
    #[arg(long, value_name = "IF")]
    inside: String,
    /// The outside (wire) interface.
    #[arg(long, value_name = "IF")]
    outside: String,
    /// Receive queues of the inside interface to serve (one worker each).
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// native (in the driver) or skb (generic).
    #[arg(long, default_value = "native")]
    xdp_mode: xfrm_user::datapath::AttachMode,
    /// The XDP object (default: $XFRM_BPF_OBJ, xfrm-ebpf.o beside this binary, or the output
    /// of `cargo xtask build-ebpf`).
    #[arg(long, value_name = "PATH")]
    bpf: Option<PathBuf>,
    /// Seconds between counter lines.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many seconds (default: at Ctrl-C / SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// The TAP device this daemon creates for the host's own traffic: what the host itself
    /// sends that an out policy protects is taken at the outside interface's egress (TC) and
    /// encrypted here; decrypted packets for the host's addresses are delivered through it.
    #[arg(long, value_name = "NAME", default_value = xfrm_user::datapath::tap::DEFAULT_LOCAL_DEV)]
    local_dev: String,
    /// Leave the host's own traffic alone (no TC program, no TAP): it then leaves in clear
    /// even where a policy says protect.
    #[arg(long)]
    no_local: bool,
    /// The state file: each SA's last output sequence number and inbound window top, so a
    /// restart goes on where the last run stopped (default:
    /// /run/xfrm-user/netns-<namespace inode>-<outside>.state).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// When the state file is unreadable, set it aside and start from the configured
    /// sequence numbers instead of refusing to start. Only after re-keying the SAs: with the
    /// old keys, numbers would be used twice.
    #[arg(long)]
    discard_corrupt_state: bool,
    /// At an orderly stop (SIGINT/SIGTERM, --duration), detach the XDP programs: the kernel
    /// then routes the protected flows (in clear unless its own xfrm protects them). Default:
    /// they stay attached and drop what they would protect until the next start.
    #[arg(long)]
    detach_on_exit: bool,
    /// Benchmark aid for `cargo xtask bench --gateway`: forward every frame UNENCRYPTED
    /// through the workers (see datapath/bench.rs). Never on a real gateway.
    #[arg(long, hide = true)]
    bench_null_transform: bool,
    /// The control socket (`xfrm-user xfrm …` talks to it; default: beside the state file,
    /// .ctl for .state).
    #[arg(long, value_name = "PATH")]
    ctl: Option<PathBuf>,
    /// Once set up, run as this user (its uid and primary gid, no other groups), keeping
    /// only CAP_NET_ADMIN as always: root's files are then out of the daemon's reach.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
}

#[derive(Args, Debug)]
struct ReloadArgs {
    /// The daemon's control socket (default: the one of this network namespace's daemon).
    #[arg(long, value_name = "PATH")]
    ctl: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct XfrmArgs {
    /// The daemon's control socket (default: the one of this network namespace's daemon).
    #[arg(long, value_name = "PATH")]
    ctl: Option<PathBuf>,
    /// Counters, as `ip -s xfrm state` prints them.
    #[arg(short = 's', long = "stats")]
    stats: bool,
    /// JSON, as `ip -j`.
    #[arg(short = 'j', long = "json")]
    json: bool,
    /// Print key material (never printed otherwise).
    #[arg(long)]
    keys: bool,
    /// What follows `ip xfrm`: `state …`, `policy …`, `monitor`, or `-batch FILE|-`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    words: Vec<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Dir {
    Out,
    In,
}

#[derive(Args, Debug)]
struct PcapArgs {
    /// The configuration file.
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// out: protect (xfrm_output); in: unprotect (xfrm_input).
    #[arg(long, value_enum)]
    dir: Dir,
    /// Capture to read (Ethernet or raw IP link type).
    #[arg(long = "in", value_name = "X.pcap")]
    input: PathBuf,
    /// Capture to write (same link type).
    #[arg(long = "out", value_name = "Y.pcap")]
    output: PathBuf,
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Args, Debug)]
struct CheckArgs {
    /// The configuration file.
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "algorithms"
    )]
    config: Option<PathBuf>,
    /// Print the algorithms xfrm-user runs, with the key and ICV lengths it accepts (as
    /// `ip xfrm` words), and exit.
    #[arg(long)]
    algorithms: bool,
}

fn init_logging(verbose: u8) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    if verbose > 0 {
        b.filter_level(match verbose {
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        });
    }
    b.init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match cli.command {
        Command::Check(a) => {
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            let Some(config) = a.config.filter(|_| !a.algorithms) else {
                return match out.write_all(xfrm_user::config::SUPPORTED_ALGORITHMS.as_bytes()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(_) => ExitCode::FAILURE,
                };
            };
            log::info!("checking {}", config.display());
            match xfrm_user::config::check(&config, &mut out, &mut err) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("xfrm-user: cannot write the report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Pcap(a) => {
            let dir = match a.dir {
                Dir::Out => xfrm_user::pcap::Direction::Out,
                Dir::In => xfrm_user::pcap::Direction::In,
            };
            let mut err = std::io::stderr().lock();
            ExitCode::from(xfrm_user::pcap::pcap_main(
                &a.config, dir, &a.input, &a.output, &mut err,
            ))
        }
        Command::Run(a) => {
            // SIGINT/SIGTERM: run's control plane (tokio) handles them.
            let opts = xfrm_user::datapath::run::RunOptions {
                config: a.config,
                inside: a.inside,
                outside: a.outside,
                queues: a.queues,
                mode: a.xdp_mode,
                bpf: a.bpf,
                interval: std::time::Duration::from_secs_f64(a.interval.max(0.1)),
                duration: a
                    .duration
                    .map(|d| std::time::Duration::from_secs_f64(d.max(0.0))),
                local_dev: (!a.no_local).then_some(a.local_dev),
                state: a.state,
                discard_corrupt_state: a.discard_corrupt_state,
                detach_on_exit: a.detach_on_exit,
                handle_signals: true,
                bench_null_transform: a.bench_null_transform,
                ctl: a.ctl,
                drop_privileges: true,
                user: a.user,
            };
            let mut out = std::io::stdout();
            match xfrm_user::datapath::run::run(&opts, &STOP, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xfrm-user: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Xfrm(a) => ExitCode::from(xfrm_client(a)),
        Command::Reload(a) => ExitCode::from(xfrm_client(XfrmArgs {
            ctl: a.ctl,
            stats: false,
            json: false,
            keys: false,
            words: vec!["reload".to_string()],
        })),
        Command::Detach(a) => {
            let ifaces: Vec<&str> = [a.inside.as_deref(), a.outside.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            let mut out = std::io::stdout();
            match xfrm_user::datapath::detach::detach(&ifaces, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xfrm-user: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Doctor(a) => {
            let rep =
                xfrm_user::datapath::doctor::doctor(&xfrm_user::datapath::doctor::DoctorOptions {
                    inside: a.inside,
                    outside: a.outside,
                    mode: a.xdp_mode,
                    queues: a.queues,
                    bpf: a.bpf,
                    local: !a.no_local,
                });
            print!("{rep}");
            if rep.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `xfrm-user xfrm …`: 0 when every request succeeded, 1 on a refused request, 2 when the
/// daemon cannot be reached.
fn xfrm_client(a: XfrmArgs) -> u8 {
    use xfrm_user::ctl::{client, render::Show};
    let show = Show {
        stats: a.stats,
        json: a.json,
        keys: a.keys,
    };
    let path = match a.ctl.map(Ok).unwrap_or_else(client::default_ctl) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xfrm-user: {e}");
            return 2;
        }
    };
    let mut c = match client::Client::connect(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xfrm-user: {e}");
            return 2;
        }
    };
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    if a.words[0] == "-batch" {
        let Some(file) = a.words.get(1).filter(|_| a.words.len() == 2) else {
            eprintln!("xfrm-user: expected '-batch FILE' (or '-batch -' for standard input)");
            return 2;
        };
        let r = if file == "-" {
            client::batch(
                &mut c,
                show,
                "-",
                &mut std::io::stdin().lock(),
                &mut out,
                &mut err,
            )
        } else {
            match std::fs::File::open(file) {
                Ok(f) => client::batch(
                    &mut c,
                    show,
                    file,
                    &mut std::io::BufReader::new(f),
                    &mut out,
                    &mut err,
                ),
                Err(e) => {
                    eprintln!("xfrm-user: {file}: {e}");
                    return 2;
                }
            }
        };
        return r.unwrap_or_else(|e| {
            eprintln!("xfrm-user: {e}");
            2
        });
    }
    let cmd = client::join_words(&a.words);
    if a.words.len() == 1 && a.words[0] == "monitor" {
        if let Err(e) = c.monitor() {
            eprintln!("xfrm-user: {e}");
            return 1;
        }
        loop {
            match c.next_event() {
                Ok(ev) => {
                    use std::io::Write;
                    if out
                        .write_all(ev.as_bytes())
                        .and_then(|_| out.flush())
                        .is_err()
                    {
                        return 0;
                    }
                }
                Err(e) => {
                    eprintln!("xfrm-user: {e}");
                    return 2;
                }
            }
        }
    }
    match c.request(show, &cmd) {
        Ok(body) => {
            use std::io::Write;
            let _ = out.write_all(body.as_bytes());
            0
        }
        Err(e) => {
            eprintln!("xfrm-user: {e}");
            1
        }
    }
}
