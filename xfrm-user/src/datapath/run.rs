//! `xfrm-user run`: the gateway. The classifier on the inside interface, one AF_XDP worker
//! per queue, the neighbour cache, and the transforms between them:
//!
//! - inside → outside: the policy the classifier found (metadata `policy_id`, a position in
//!   `XfrmDb::policies(Out)`), its templates resolved to SAs, the size check against what the
//!   bundle leaves of the route MTU (ICMP back when too big), the inner checksum finished if
//!   veth left it partial, then `xfrm_output_bundle`;
//! - outside → inside: `xfrm_input` (decrypt, replay, decapsulate, policy check), then to the
//!   inner destination on the inside.
//!
//! The outside interface runs the program's outside entry point (`xfrm_outside`): ESP, AH and
//! ESP-in-UDP for one of our SAs, found by (daddr, SPI, protocol), go to the workers' outside
//! sockets; IKE, keepalives and everything else stay with the kernel. One-armed (inside =
//! outside): that program alone, in one-armed mode, classifies both directions into one
//! socket per queue, and `META_F_INBOUND` tells the worker which direction a frame is.
//!
//! The gateway's own traffic (transport mode between the gateways, say) never passes XDP:
//! the TC egress program `xfrm_local_out` on the outside interface sends what an out policy
//! protects to the daemon's TAP device (tap.rs), the workers read it and classify it here
//! with the same rules ([`XfrmDb::policy_lookup`]), and decapsulated packets for one of
//! the host's addresses go back to it through the TAP. A SYN the host sends has its MSS
//! clamped to what the bundle leaves, since its stack cannot know the ESP overhead.
//!
//! Restarts: each SA's output sequence counter and inbound window top live in a state file
//! mapped into the process (`xfrm::persist`), so a daemon started again, after `kill -9` or
//! an orderly stop, goes on above every number it handed out and refuses replays of what it
//! delivered. The XDP programs stay attached when the daemon stops, whatever the reason
//! (fail closed; `--detach-on-exit` or `xfrm-user detach` take them off).

use std::{
    cell::RefCell,
    collections::HashMap,
    io::Write,
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, SyncSender},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use xfrm_common::XdpMeta;

use super::{
    bench::NullOr,
    loader::{AttachMode, Datapath, Program},
    neigh::{NeighOptions, NeighService},
    reasm::Reassembled,
    rules::compile_db,
    tap::Tap,
    worker::{port_info, reply_too_big, Action, Ctx, Side, Transform, Worker, WorkerConfig},
};
use crate::config::request::Request;
use crate::ctl::{
    apply::control,
    handover::{Handover, Reader},
    render::Show,
    server::Server,
    store::{Acquire, Tables, ACQUIRE_INTERVAL_SECS},
};
use crate::frame::Frame;
use crate::policy::{Policy, PolicyAction, PolicyDir};
use crate::selector::FlowKey;
use crate::stats::{XfrmStat, XfrmStats};
use crate::wire::flow;
use crate::xfrm::{
    output::{xfrm_output_policy, OutputOpts, PolicyVerdict},
    persist, xfrm_input_flow, InputVerdict, SystemClock, Verdict, XfrmDb,
};

/// What the workers share: the tables (SAD, SPD, input tables), each change handed over as a
/// delta that every worker applies to its own copy (ctl::handover), and the counters.
pub struct Gateway {
    pub tables: Handover<Tables>,
    pub stats: Arc<XfrmStats>,
    /// The workers' acquires (a packet met a policy without SA), for the control plane.
    acquire_tx: SyncSender<Acquire>,
    pub acquires: Receiver<Acquire>,
}

/// Acquires waiting for the control plane at most; more are dropped (the next packet of
/// the flow raises it again after the interval).
const ACQUIRE_QUEUE: usize = 256;

impl Gateway {
    pub fn new(db: XfrmDb) -> Self {
        let (acquire_tx, acquires) = std::sync::mpsc::sync_channel(ACQUIRE_QUEUE);
        Self {
            tables: Handover::new(Tables::new(db)),
            stats: Arc::new(XfrmStats::new()),
            acquire_tx,
            acquires,
        }
    }

    /// A transform for one worker (cheap: shares everything).
    pub fn transform(&self) -> Result<GatewayTransform> {
        Ok(GatewayTransform {
            tables: self
                .tables
                .reader()
                .context("the worker's wake-up eventfd")?,
            stats: self.stats.clone(),
            acquire: self.acquire_tx.clone(),
            acquired: RefCell::new(HashMap::new()),
        })
    }

    /// The addresses the gateway sends to: SA destinations and NAT-T peers (resolved at
    /// start so the first packets find their MAC).
    pub fn peers(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = Vec::new();
        for x in self.tables.current().db.states() {
            v.push(x.daddr());
            if let Some(e) = x.cfg.encap {
                v.push(e.oaddr);
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

pub struct GatewayTransform {
    /// This worker's own copy of the tables, changed between batches.
    tables: Reader<Tables>,
    stats: Arc<XfrmStats>,
    acquire: SyncSender<Acquire>,
    /// The acquires this worker raised, until when: one per policy and flow per interval
    /// (the control plane dedups across workers).
    acquired: RefCell<HashMap<(u32, FlowKey), u64>>,
}

impl GatewayTransform {
    fn drop_with(&self, s: XfrmStat) -> Action {
        self.stats.inc(s);
        Action::Drop
    }

    fn db(&self) -> &XfrmDb {
        &self.tables.get().db
    }

    /// km_query: tell the key manager a flow needs an SA, once per policy and flow and
    /// interval; never blocks (a full queue drops it).
    #[cold]
    fn raise_acquire(&self, pol: &Policy, flow: &FlowKey, now: u64) {
        let mut m = self.acquired.borrow_mut();
        let key = (pol.index, *flow);
        if m.get(&key).is_some_and(|&until| until > now) {
            return;
        }
        if m.len() >= 1024 {
            m.retain(|_, until| *until > now);
        }
        m.insert(key, now + ACQUIRE_INTERVAL_SECS);
        let _ = self.acquire.try_send(Acquire {
            policy: pol.clone(),
            flow: *flow,
        });
    }

    /// A frame of the host's own (from the TAP): the classifier's work done here, with the
    /// same rules, then [`Self::output`] as for the inside.
    fn output_local(&self, frame: &mut Frame<'_>, ctx: &Ctx<'_>) -> Action {
        let Ok(info) = flow::parse(frame.data()) else {
            return self.drop_with(XfrmStat::XfrmOutError);
        };
        // TC redirects only what a protect rule covers; a frame without one means the tables
        // disagree (or the kernel wrote to the TAP on its own): never send it in clear.
        let Some(pol) = self.db().policy_lookup(PolicyDir::Out, &info.key) else {
            return self.drop_with(XfrmStat::XfrmOutPolError);
        };
        if pol.action == PolicyAction::Block {
            return self.drop_with(XfrmStat::XfrmOutPolBlock);
        }
        self.output_policy(pol, &info, frame, ctx, true)
    }

    fn output(&self, meta: Option<&XdpMeta>, frame: &mut Frame<'_>, ctx: &Ctx<'_>) -> Action {
        // Fail closed: without the classifier's word we do not know the policy.
        let Some(m) = meta else {
            return self.drop_with(XfrmStat::XfrmOutPolError);
        };
        let Ok(info) = flow::parse(frame.data()) else {
            return self.drop_with(XfrmStat::XfrmOutError);
        };
        // The classifier's rule is of our tables, or of the ones before or after a change
        // (its tag says): then our own lookup decides, so the packet sees one version.
        let db = self.db();
        let pol = match db.policy_by_id(m.policy_id) {
            Some(p) => Some(p),
            None => db.policy_lookup(PolicyDir::Out, &info.key),
        };
        let Some(pol) = pol else {
            return self.drop_with(XfrmStat::XfrmOutPolError);
        };
        if pol.action == PolicyAction::Block {
            return self.drop_with(XfrmStat::XfrmOutPolBlock);
        }
        self.output_policy(pol, &info, frame, ctx, false)
    }

    /// The packet in `frame` (parsed: `info`) under the protect policy `pol`: the output
    /// path every mode shares ([`xfrm_output_policy`]), with the route towards the outermost
    /// SA's peer from the neighbour cache (one lookup, handed to the worker with the
    /// action). `local`: the host's own packet, whose TCP SYNs get their MSS clamped.
    fn output_policy(
        &self,
        pol: &Policy,
        info: &flow::FlowInfo,
        frame: &mut Frame<'_>,
        ctx: &Ctx<'_>,
        local: bool,
    ) -> Action {
        let db = self.db();
        // Not resolved yet (the lookup asked for it): the outside interface's MTU, and the
        // worker holds the ESP packet until the peer's MAC arrives, as the kernel queues it
        // on the neighbour.
        let mut hop = None;
        let mut route = |peer: IpAddr| {
            hop = ctx.l2(peer);
            Some(hop.map_or(ctx.port(Side::Outside).mtu, |l2| l2.mtu))
        };
        let opts = OutputOpts {
            csum_partial: None,
            clamp_mss: local,
        };
        match xfrm_output_policy(db, pol, info, &self.stats, frame, opts, &mut route) {
            PolicyVerdict::Done(Verdict::Transformed) => match hop {
                Some(l2) => Action::TxTo(Side::Outside, l2),
                None => Action::Tx(Side::Outside),
            },
            PolicyVerdict::Done(Verdict::Dropped(s)) => {
                if s == XfrmStat::XfrmOutNoStates {
                    self.raise_acquire(pol, &info.key, db.now());
                }
                Action::Drop
            }
            // A policy without SA to apply would mean clear text: the classifier passes
            // those, so getting one here means the tables disagree. Never send it in clear.
            PolicyVerdict::Done(Verdict::Pass) => self.drop_with(XfrmStat::XfrmOutPolError),
            PolicyVerdict::TooBig(check) => reply_too_big(frame, info, check, ctx),
        }
    }
}

impl Transform for GatewayTransform {
    fn process(
        &mut self,
        from: Side,
        meta: Option<&XdpMeta>,
        frame: &mut Frame<'_>,
        ctx: &Ctx<'_>,
    ) -> Action {
        match from {
            Side::Inside => self.output(meta, frame, ctx),
            Side::Local => self.output_local(frame, ctx),
            // To the inner destination, as the policy check parsed it; the worker hands it to
            // the host when that is one of its own addresses.
            Side::Outside => {
                let t = self.tables.get();
                match xfrm_input_flow(&t.db, &t.input, &self.stats, frame) {
                    (InputVerdict::Decapsulated, Some(plain)) => {
                        Action::Route(Side::Inside, plain.key.dst)
                    }
                    _ => Action::Drop,
                }
            }
        }
    }

    fn between_batches(&mut self) {
        self.tables.refresh();
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.tables.wake_fd())
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    pub inside: String,
    pub outside: String,
    pub queues: u32,
    pub mode: AttachMode,
    pub bpf: Option<PathBuf>,
    /// Between two counter lines.
    pub interval: Duration,
    /// Stop after this long (None: until `stop`).
    pub duration: Option<Duration>,
    /// The TAP device for the host's own traffic (None: the host's own packets are not
    /// protected, as without this daemon).
    pub local_dev: Option<String>,
    /// The state file (sequence numbers across restarts); None: the default,
    /// [`persist::default_path`] (per network namespace and outside interface).
    pub state: Option<PathBuf>,
    /// Start fresh when the state file is unreadable instead of refusing to start (the file
    /// is set aside): only after the SAs were re-keyed.
    pub discard_corrupt_state: bool,
    /// At an orderly stop, take the XDP programs off the interfaces (the kernel then routes
    /// the protected flows, in clear unless its own xfrm protects them). Default: they stay,
    /// and drop what they would protect until the next start (fail closed).
    pub detach_on_exit: bool,
    /// SIGINT/SIGTERM stop the gateway (the command line); false leaves the process's signal
    /// handling alone (a gateway run in a thread of a test).
    pub handle_signals: bool,
    /// Benchmark aid (bench.rs): forward every frame unencrypted, both ways through a worker.
    pub bench_null_transform: bool,
    /// The control socket (None: beside the state file, `.ctl` for `.state`).
    pub ctl: Option<PathBuf>,
    /// Once set up, drop every capability but what the running gateway needs, set
    /// no_new_privs and make the process non-dumpable ([`super::privs`]). Capabilities are
    /// per thread: a gateway run in a thread drops its own (and its workers').
    pub drop_privileges: bool,
    /// With `drop_privileges`: also become this user (uid, primary gid), keeping
    /// CAP_NET_ADMIN. The state file stays open (mapped) but its directory is root's. The ids
    /// are the whole process's (glibc changes every thread's): for the command line.
    pub user: Option<String>,
}

impl RunOptions {
    /// The defaults of the command line: one queue, native XDP, the object found by
    /// `resolve_object`, a counter line a second, until stopped, the default state file,
    /// programs kept attached at exit, the host's own traffic through the default TAP,
    /// privileges dropped once set up.
    pub fn new(config: PathBuf, inside: &str, outside: &str) -> Self {
        Self {
            config,
            inside: inside.to_string(),
            outside: outside.to_string(),
            queues: 1,
            mode: AttachMode::Native,
            bpf: None,
            interval: Duration::from_secs(1),
            duration: None,
            state: None,
            discard_corrupt_state: false,
            detach_on_exit: false,
            handle_signals: false,
            ctl: None,
            drop_privileges: true,
            user: None,
            local_dev: Some(super::tap::DEFAULT_LOCAL_DEV.to_string()),
            bench_null_transform: false,
        }
    }
}

/// One pair of counter lines: the programs' verdicts, then the workers' and the xfrm
/// counters.
fn write_counters(
    out: &mut dyn Write,
    dp: &Datapath,
    wstats: &[Arc<super::worker::WorkerStats>],
    gw: &Gateway,
) -> Result<()> {
    let stats = &*gw.stats;
    let sum =
        |f: fn(&super::worker::WorkerStats) -> u64| -> u64 { wstats.iter().map(|w| f(w)).sum() };
    let xdp_in = dp.counters().map(|c| c.to_string()).unwrap_or_default();
    let xdp_out = dp
        .outside_counters()
        .map(|c| c.to_string())
        .unwrap_or_default();
    let tc_local = match dp.local_out_iface() {
        Some(_) => dp
            .local_counters()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        None => "off".to_string(),
    };
    writeln!(
        out,
        "xdp inside: {xdp_in} | xdp outside: {xdp_out} | tc local: {tc_local}"
    )?;
    writeln!(
        out,
        "out {} pkts + local {} -> wire {}, in {} (reassembled {}) -> inside {} + local {}, \
         icmp {}, frags {}, no-l2 {}, no-buffer {}, too-big {}, drops {}, bad frames {}, \
         unres-discards {}, tx-full {}, tx-device-drops {}, xsk rx-dropped {} rx-ring-full {} \
         fill-empty {} tx-invalid {} | {}",
        sum(|w| w.rx[0].load(Ordering::Relaxed)),
        sum(|w| w.rx[2].load(Ordering::Relaxed)),
        sum(|w| w.tx[1].load(Ordering::Relaxed)),
        sum(|w| w.rx[1].load(Ordering::Relaxed)),
        sum(|w| w.reassembled.load(Ordering::Relaxed)),
        sum(|w| w.tx[0].load(Ordering::Relaxed)),
        sum(|w| w.tx[2].load(Ordering::Relaxed)),
        sum(|w| w.replies.load(Ordering::Relaxed)),
        sum(|w| w.fragments.load(Ordering::Relaxed)),
        sum(|w| w.no_l2.load(Ordering::Relaxed)),
        sum(|w| w.no_buffer.load(Ordering::Relaxed)),
        sum(|w| w.too_big.load(Ordering::Relaxed)),
        sum(|w| w.dropped.load(Ordering::Relaxed)),
        // Frames without Ethernet + IP, or from a socket without a valid XdpMeta header.
        sum(|w| w.bad_frame.load(Ordering::Relaxed) + w.bad_meta.load(Ordering::Relaxed)),
        sum(|w| w.unres_discards.load(Ordering::Relaxed)),
        sum(|w| w.tx_full.load(Ordering::Relaxed)),
        sum(|w| w.tx_device_drops.load(Ordering::Relaxed)),
        sum(|w| w.xsk.rx_dropped.load(Ordering::Relaxed)),
        sum(|w| w.xsk.rx_ring_full.load(Ordering::Relaxed)),
        sum(|w| w.xsk.rx_fill_empty.load(Ordering::Relaxed)),
        sum(|w| w.xsk.tx_invalid.load(Ordering::Relaxed)),
        stats.render_nonzero().replace('\n', " ").trim_end(),
    )?;
    for x in gw.tables.current().db.states() {
        if let Some(line) = sa_line(x) {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// One SA's counters, as `ip -s xfrm state` shows them (lifetime use, the replay and
/// integrity drops of x->stats, the output sequence number) plus its nonzero /proc counters;
/// None for an SA that has seen nothing yet.
fn sa_line(x: &crate::xfrm::state::SecurityAssociation) -> Option<String> {
    // Most SAs of a large table are idle: nothing allocated or locked for them.
    let packets = x.curlft_packets();
    if packets == 0 && x.stats.is_zero() {
        return None;
    }
    let input = x.input().stats;
    let own = x.stats.render_nonzero();
    let mut line = format!(
        "  sa {:?} spi 0x{:08x} {:?} {} > {}: {} pkts {} bytes, oseq {}",
        x.cfg.id.proto,
        x.spi(),
        x.cfg.mode,
        x.saddr(),
        x.daddr(),
        packets,
        x.curlft_bytes(),
        x.oseq(),
    );
    if input.replay_window + input.replay + input.integrity_failed > 0 {
        line.push_str(&format!(
            ", replay-window {} replay {} integrity-failed {}",
            input.replay_window, input.replay, input.integrity_failed
        ));
    }
    if !own.is_empty() {
        line.push_str(" | ");
        line.push_str(own.replace('\n', " ").trim_end());
    }
    Some(line)
}

/// SIGINT and SIGTERM (stop) and SIGHUP (reload the configuration) through tokio, when the
/// caller wants them (the command line; a test running the gateway in a thread keeps the
/// process's own handling).
struct Signals(
    Option<(
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    )>,
);

impl Signals {
    fn new(on: bool) -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self(if on {
            Some((
                signal(SignalKind::interrupt()).context("SIGINT handler")?,
                signal(SignalKind::terminate()).context("SIGTERM handler")?,
                signal(SignalKind::hangup()).context("SIGHUP handler")?,
            ))
        } else {
            None
        }))
    }

    /// The next signal's name; never, without handlers.
    async fn recv(&mut self) -> &'static str {
        match &mut self.0 {
            Some((int, term, hup)) => tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            },
            None => std::future::pending().await,
        }
    }
}

/// The programs onto the interfaces: inside (or one-armed), outside, then the host's own
/// output last, once the workers hold the TAP's queues.
fn attach_all(
    dp: &mut Datapath,
    opts: &RunOptions,
    one_armed: bool,
    tap: Option<&Tap>,
) -> Result<()> {
    // (The null-transform benchmark takes clear text from the wire to a worker as well.)
    if one_armed || opts.bench_null_transform {
        dp.set_one_armed(true)?;
    }
    if !one_armed {
        dp.attach_persistent(Program::Inside, &opts.inside, opts.mode)?;
    }
    dp.attach_persistent(Program::Outside, &opts.outside, opts.mode)?;
    if let Some(t) = tap {
        dp.set_local_dev(t.info.ifindex)?;
        dp.attach_local_out(&opts.outside)
            .context("the host's own traffic (--no-local leaves it alone)")?;
    }
    Ok(())
}

/// Runs the gateway until `stop` (or the duration) in the calling thread's network
/// namespace; prints counter lines to `out`.
pub fn run(opts: &RunOptions, stop: &AtomicBool, out: &mut dyn Write) -> Result<()> {
    // The control plane's runtime: what starts below while it is entered (the neighbour
    // cache, the log pump) runs as its tasks once the loop drives it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("the control plane's runtime")?;
    let _enter = rt.enter();
    // Before anything is set up: a signal that arrives meanwhile is kept for the loop.
    let mut signals = Signals::new(opts.handle_signals)?;
    // A user that does not exist is refused before anything is set up.
    let user = match &opts.user {
        Some(name) => Some(super::privs::lookup_user(name)?),
        None => None,
    };
    let cfg = crate::config::load_config(&opts.config).map_err(|errs| {
        let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        anyhow!("invalid configuration:\n{}", lines.join("\n"))
    })?;
    // The counters first: nothing may be sent before they are known.
    let state_path = match &opts.state {
        Some(p) => p.clone(),
        None => persist::default_path(&opts.outside)
            .context("the default state file's name (network namespace)")?,
    };
    // The configuration, then what the control plane changed before a restart.
    let kept = crate::ctl::keep::restore(
        &state_path,
        opts.discard_corrupt_state,
        cfg,
        Arc::new(SystemClock),
    )?;
    let (store, db, mut sad) = (kept.file, kept.db, kept.store);
    let gw = Gateway::new(db);
    let r = store.report();
    let state_line = format!(
        "state {}: {} SA(s) carried over, {} new{}{}",
        store.path().display(),
        r.carried,
        r.fresh,
        if r.retired > 0 {
            format!(", {} no longer configured (kept, retired)", r.retired)
        } else {
            String::new()
        },
        if r.discarded.is_some() {
            " (an unreadable file was set aside: --discard-corrupt-state)"
        } else {
            ""
        }
    ) + "; "
        + &kept.summary;
    let start = gw.tables.current();
    for x in start
        .db
        .states()
        .iter()
        .filter(|x| x.oseq() > 0 || x.persisted_in_top() > 0)
    {
        log::info!(
            "SA spi 0x{:08x} dst {}: output goes on after {}, input window top {}",
            x.spi(),
            x.daddr(),
            x.oseq(),
            x.persisted_in_top()
        );
    }
    let rules = compile_db(&start.db)?;
    let inside = port_info(&opts.inside)?;
    let outside = port_info(&opts.outside)?;
    let one_armed = inside.ifindex == outside.ifindex;
    log::info!(
        "what this kernel and the interfaces offer (xfrm-user doctor probes more):\n{}",
        super::doctor::startup_summary(&opts.inside, &opts.outside).trim_end()
    );
    let neigh = NeighService::start(&gw.peers(), NeighOptions::default())?;
    let mut dp = Datapath::load_default(opts.bpf.as_deref())?;
    // Out policies, SAs, NAT-T ports (InputTables' rule, as the transforms use).
    dp.install(&start.db)?;
    let mut tap = match &opts.local_dev {
        Some(name) => Some(Tap::create(name, opts.queues.max(1), outside.mtu)?),
        None => None,
    };
    let mut tap_queues = tap
        .as_mut()
        .map(|t| t.take_queues())
        .unwrap_or_default()
        .into_iter();
    let mut workers = Vec::new();
    for q in 0..opts.queues.max(1) {
        let mut w = Worker::new(
            WorkerConfig::new(inside.clone(), outside.clone(), q),
            NullOr::new(gw.transform()?, opts.bench_null_transform),
            neigh.reader(),
        )
        .with_context(|| format!("worker for queue {q}"))?;
        if let (Some(t), Some(fd)) = (&tap, tap_queues.next()) {
            w = w.with_local(fd, t.info.clone());
        }
        if q == 0 {
            w = w.with_reassembled(Reassembled::open()?);
        }
        let [fd_in, fd_out] = w.rx_fds();
        if !one_armed {
            dp.set_socket(q, fd_in)?;
        }
        dp.set_outside_socket(q, fd_out)?;
        workers.push(w);
    }
    // What the interfaces run now, to put back if attaching fails half-way (opening a
    // program by id needs the privileges dropped next).
    if !one_armed {
        dp.remember_previous(&opts.inside, opts.mode);
    }
    dp.remember_previous(&opts.outside, opts.mode);
    // The control socket while its directory (root's) is still ours to write in. Requests
    // are taken only once the loop below runs: when everything they change exists.
    let ctl_path = opts
        .ctl
        .clone()
        .unwrap_or_else(|| crate::ctl::socket::default_path(&state_path));
    let mut ctl = Server::start(&ctl_path)
        .with_context(|| format!("control socket {}", ctl_path.display()))?;
    // Everything but the attachments is set up: least privilege from here on. Attaching
    // needs only CAP_NET_ADMIN, which is kept; a failed drop leaves nothing attached.
    if opts.drop_privileges {
        super::privs::drop_after_start(user).context("dropping privileges")?;
    }
    // Netlink mode: the programs outlive a killed daemon and then drop what they would
    // protect (fail closed); a restart swaps them atomically. See loader.rs. A failure
    // half-way puts back what each interface had: nothing is left half-attached.
    if let Err(e) = attach_all(&mut dp, opts, one_armed, tap.as_ref()) {
        dp.rollback_persistent();
        return Err(e);
    }
    let wstats: Vec<_> = workers.iter().map(|w| w.stats()).collect();
    writeln!(
        out,
        "xfrm-user: gateway {} -> {} ({:?}), {} SAs, {} out policies, {} worker(s), host's own \
         traffic {}; Ctrl-C stops",
        opts.inside,
        opts.outside,
        opts.mode,
        start.db.states().len(),
        rules.len(),
        workers.len(),
        match &tap {
            Some(t) => format!("through {}", t.info.name),
            None => "not protected (--no-local)".to_string(),
        }
    )?;
    writeln!(out, "xfrm-user: {state_line}")?;
    if opts.bench_null_transform {
        log::warn!("--bench-null-transform: every frame is forwarded UNENCRYPTED");
        writeln!(
            out,
            "xfrm-user: BENCHMARK AID --bench-null-transform: frames are forwarded unencrypted"
        )?;
    }
    // The first tables are the store's and the workers' now; a deleted SA must not live on
    // here (its key would stay in memory).
    drop(start);
    writeln!(out, "xfrm-user: control socket {}", ctl_path.display())?;
    out.flush()?;
    let workers_stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<()> {
        let mut handles: Vec<Option<_>> = workers
            .iter_mut()
            .enumerate()
            .map(|(q, w)| {
                let stop = &workers_stop;
                std::thread::Builder::new()
                    .name(format!("xfrm-worker-{q}"))
                    .spawn_scoped(s, move || w.run(stop))
                    .map(Some)
            })
            .collect::<std::io::Result<_>>()?;
        let mut failed = None;
        // The control plane: signals, the stop flag and the duration, workers that end on
        // their own, and the counter lines, on the tokio runtime that also runs the
        // neighbour cache's netlink task and the eBPF log pump.
        rt.block_on(async {
            let deadline = tokio::time::sleep(opts.duration.unwrap_or(Duration::MAX));
            tokio::pin!(deadline);
            let mut check = tokio::time::interval(Duration::from_millis(50));
            // Lifetimes by time and the workers' acquires (the kernel's timers count in
            // seconds; a quarter of one is soon enough).
            let mut lifetimes = tokio::time::interval(Duration::from_millis(250));
            let mut report = tokio::time::interval_at(
                tokio::time::Instant::now() + opts.interval,
                opts.interval,
            );
            loop {
                tokio::select! {
                    sig = signals.recv() => {
                        if sig == "SIGHUP" {
                            match control(&Request::Reload, None, Show::default(), &opts.config, &mut sad, &gw.tables, &mut dp, &ctl.events) {
                                Ok(r) => log::info!("SIGHUP: {}", r.trim_end()),
                                Err(e) => log::error!("SIGHUP: {e}"),
                            }
                            continue;
                        }
                        log::info!("{sig}: stopping");
                        break;
                    }
                    _ = &mut deadline, if opts.duration.is_some() => break,
                    _ = lifetimes.tick() => {
                        while let Ok(a) = gw.acquires.try_recv() {
                            if let Some(ev) = sad.acquire(&a) {
                                let _ = ctl.events.send(ev);
                            }
                        }
                        let (evs, hard) = sad.expiries();
                        for ev in evs {
                            let _ = ctl.events.send(ev);
                        }
                        // Past a hard limit the SA goes, as the kernel deletes it.
                        for id in hard {
                            let req = Request::StateDelete(id);
                            if let Err(e) = control(&req, None, Show::default(), &opts.config, &mut sad, &gw.tables, &mut dp, &ctl.events) {
                                log::error!("expired SA spi 0x{:08x}: delete: {e}", id.spi);
                            }
                        }
                    }
                    Some(call) = ctl.calls.recv() => {
                        let r = control(&call.request, Some(&call.text), call.show, &opts.config, &mut sad, &gw.tables, &mut dp, &ctl.events);
                        let _ = call.reply.send(r);
                    }
                    _ = report.tick() => {
                        write_counters(out, &dp, &wstats, &gw)?;
                    }
                    _ = check.tick() => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        // A worker that stopped on its own: take its sockets out of the
                        // XSKS maps, so the classifier drops (and counts) what it would
                        // have protected instead of redirecting into a socket nobody reads;
                        // the others go on.
                        for (q, slot) in handles.iter_mut().enumerate() {
                            if !slot.as_ref().is_some_and(|h| h.is_finished()) {
                                continue;
                            }
                            let r = match slot.take().map(|h| h.join()) {
                                Some(Ok(r)) => r.err().map(|e| format!("{e:#}")),
                                _ => Some("panicked".to_string()),
                            };
                            let why = r.unwrap_or_else(|| "stopped".to_string());
                            log::error!("worker {q}: {why}; its queue now drops (fail closed)");
                            dp.clear_socket(q as u32)?;
                            dp.clear_outside_socket(q as u32)?;
                            failed.get_or_insert(format!("worker {q}: {why}"));
                        }
                        if handles.iter().all(|h| h.is_none()) {
                            break;
                        }
                    }
                }
            }
            anyhow::Ok(())
        })?;
        workers_stop.store(true, Ordering::Relaxed);
        for (q, h) in handles.into_iter().enumerate() {
            match h.map(|h| h.join()) {
                Some(Ok(r)) => r.with_context(|| format!("worker {q}"))?,
                Some(Err(_)) => anyhow::bail!("worker {q} panicked"),
                None => {}
            }
        }
        match failed {
            Some(f) => Err(anyhow!("{f}")),
            None => Ok(()),
        }
    })?;
    drop(ctl);
    let _ = std::fs::remove_file(&ctl_path);
    // Orderly stop (the stop flag or the duration). The workers and their sockets are gone;
    // the counters are in the file (msync for a file on disk; the page cache has them).
    if let Err(e) = store.sync() {
        log::warn!("state file {}: msync: {e}", store.path().display());
    }
    let ifaces = dp.persistent_interfaces().join(" and ");
    if opts.detach_on_exit {
        dp.detach_persistent()?;
        log::info!("stopped; XDP programs detached from {ifaces} (--detach-on-exit)");
        writeln!(
            out,
            "xfrm-user: stopped; XDP programs detached from {ifaces} (--detach-on-exit): the \
             kernel routes the protected flows now"
        )?;
    } else {
        // Fail closed until the next start: protect verdicts find no socket and are dropped
        // and counted (drop_no_socket), inbound IPsec for our SAs likewise; the rest passes.
        log::info!("stopped; XDP programs stay attached on {ifaces} (fail closed)");
        writeln!(
            out,
            "xfrm-user: stopped; XDP programs stay attached on {ifaces}: protected traffic is \
             dropped (fail closed) until `xfrm-user run` starts again or `xfrm-user detach \
             --inside {} --outside {}` removes them",
            opts.inside, opts.outside
        )?;
    }
    out.flush()?;
    drop(dp);
    drop(tap);
    drop(store);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sa_lines_show_use_and_drops() {
        use crate::sa::XfrmMode;
        use crate::xfrm::state::tests::esp_cfg;
        let cfg = esp_cfg(0x1000, "10.2.0.1", "10.3.0.2", XfrmMode::Tunnel);
        let db = XfrmDb::new(vec![cfg], vec![]).unwrap();
        let x = &db.states()[0];
        assert_eq!(sa_line(x), None, "unused: no line");
        x.xfrm_replay_overflow().unwrap();
        x.add_curlft(1400);
        x.count(&XfrmStats::new(), XfrmStat::XfrmOutStateExpired);
        let line = sa_line(x).unwrap();
        assert!(
            line.starts_with(
                "  sa Esp spi 0x00001000 Tunnel 10.2.0.1 > 10.3.0.2: 1 pkts 1400 bytes, oseq 1"
            ),
            "{line}"
        );
        assert!(line.contains("| XfrmOutStateExpired"), "{line}");
        assert!(!line.contains("replay"), "no replay drops: {line}");
    }
}
