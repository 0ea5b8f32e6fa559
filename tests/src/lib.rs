//! Test support for xfrm-ebpf: the namespace/veth topology helper, packet crafting, and the
//! guards that root-only tests start with.
//!
//! Integration tests live in `tests/tests/`; `cargo xtask test` runs them (as root in CI).

pub mod capture;
pub mod daemon;
pub mod gateway;
pub mod gwbench;
pub mod load;
pub mod packet;
pub mod peer;
pub mod probe;
pub mod sa;
pub mod scenario;
pub mod sock;
pub mod strongswan;
pub mod topology;
pub mod traffic;

use std::path::PathBuf;

/// True when this process may create namespaces, load BPF and open AF_XDP sockets. Otherwise
/// prints why the test is skipped: root-only tests return early, they do not fail.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    // Straight to fd 2: libtest captures println!/eprintln! of passing tests, and a skip must
    // be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: needs root (network namespaces, BPF, AF_XDP); run `cargo xtask test` as \
         root, as CI does"
    );
    false
}

/// The XDP object the tests load (`cargo xtask test` passes it in $XFRM_BPF_OBJ). A root test
/// without it fails: it would otherwise pass without testing anything.
pub fn bpf_object() -> PathBuf {
    match xfrm_user::datapath::loader::resolve_object(None) {
        Ok(p) => p,
        Err(e) => panic!("{e:#}"),
    }
}

/// `RUST_LOG` for tests (eBPF log records included), once per process.
pub fn init_logging() {
    let _ = env_logger_init();
}

fn env_logger_init() -> Result<(), log::SetLoggerError> {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    log::set_logger(&LOGGER)?;
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    log::set_max_level(level);
    Ok(())
}
