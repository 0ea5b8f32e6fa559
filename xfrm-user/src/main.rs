//! The xfrm-user command: one subcommand per mode. Each subcommand has its own argument struct
//! and a function in the library, so adding one (`pcap`, `run`, …) is a variant, an Args
//! struct and a match arm.

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
    /// carries (ESP/AH), copies packets without a policy, drops blocked ones; a summary and
    /// the non-zero /proc/net/xfrm_stat counters go to stderr.
    Pcap(PcapArgs),
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

#[derive(Args, Debug)]
struct CheckArgs {
    /// The configuration file.
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
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
            log::info!("checking {}", a.config.display());
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            match xfrm_user::config::check(&a.config, &mut out, &mut err) {
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
    }
}
