//! The two-gateway topology of the acceptance tests and the configurations of its
//! gateways, generated per test:
//!
//! ```text
//!  host-a ──lan a── gw-a ══wan a══ wire ══wan b══ gw-b ──lan b── host-b
//!  10.1.0.1   10.1.0.2 | 10.2.0.1   10.2.0.2 | 10.3.0.1   10.3.0.2 | 10.4.0.1   10.4.0.2
//!  fd00:1::1  fd00:1::2| fd00:2::1  fd00:2::2| fd00:3::1  fd00:3::2| fd00:4::1  fd00:4::2
//! ```
//!
//! Five namespaces. `wire` is a router between the gateways (the internet: it forwards, and
//! knows only its connected networks, so a host address reaching it in clear goes no
//! further) and the place of the capture ([`crate::capture`]): a packet socket there sees
//! every frame both gateways put on the wire, which a socket in a gateway namespace would not
//! (AF_XDP transmit bypasses the packet taps, and XDP runs before them on receive).
//!
//! The gateways forward (`ip_forward` 1, as a gateway must for the traffic its policies
//! pass) and route the far LAN and the far wire network through `wire`; the hosts have a
//! default route to their gateway. Nothing here runs the datapath: the tests start
//! `xfrm-user run` in `gw-a` / `gw-b` ([`crate::daemon`]).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;

use crate::topology::{Link, Port, Topology, VethOpts};

/// IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn addr(self, p: &Port) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(p.ipv4),
            Family::V6 => IpAddr::V6(p.ipv6),
        }
    }
    /// The /24 or /64 of a port's address.
    pub fn subnet(self, p: &Port) -> String {
        match self {
            Family::V4 => {
                let o = p.ipv4.octets();
                format!("{}/24", Ipv4Addr::new(o[0], o[1], o[2], 0))
            }
            Family::V6 => {
                let s = p.ipv6.segments();
                format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        }
    }
    fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// Options of the topology.
#[derive(Clone, Copy, Debug)]
pub struct NetOpts {
    /// TX checksum offload on the hosts' links (veth default). With it a host's TCP/UDP
    /// checksums are partial (CHECKSUM_PARTIAL) when they reach the gateway; a NIC on a real
    /// wire would have completed them. Off (`ethtool -K tx off`) = what a physical LAN
    /// delivers.
    pub host_tx_checksum: bool,
    /// Interface MTU everywhere.
    pub mtu: u32,
    /// Queues of every link, and `xfrm-user run --queues` on both gateways.
    pub queues: u32,
}

impl Default for NetOpts {
    fn default() -> Self {
        Self {
            host_tx_checksum: false,
            mtu: 1500,
            queues: 1,
        }
    }
}

/// host-a — gw-a ══ wire ══ gw-b — host-b.
pub struct GatewayNet {
    pub topo: Topology,
    pub host_a: usize,
    pub gw_a: usize,
    pub wire: usize,
    pub gw_b: usize,
    pub host_b: usize,
    /// a = host-a, b = gw-a's inside interface.
    pub lan_a: Link,
    /// a = gw-a's outside interface, b = wire.
    pub wan_a: Link,
    /// a = wire, b = gw-b's outside interface.
    pub wan_b: Link,
    /// a = gw-b's inside interface, b = host-b.
    pub lan_b: Link,
    /// gw-a is one-armed ([`GatewayNet::one_armed`]): `lan_a` then joins host-a to `wire`,
    /// and gw-a's inside is its outside port.
    pub one_armed_a: bool,
    /// Queues per link ([`NetOpts::queues`]): the gateways serve each with a worker.
    pub queues: u32,
}

/// One side of the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

impl GatewayNet {
    pub fn new(opts: NetOpts) -> Result<Self> {
        let net = Self::build(opts, false)?;
        net.configure()?;
        Ok(net)
    }

    /// The five namespaces and four links; one-armed, host-a's link goes to the wire router
    /// instead of gw-a.
    fn build(opts: NetOpts, one_armed_a: bool) -> Result<Self> {
        let mut topo = Topology::new()?;
        let host_a = topo.add_netns("ha")?;
        let gw_a = topo.add_netns("ga")?;
        let wire = topo.add_netns("wire")?;
        let gw_b = topo.add_netns("gb")?;
        let host_b = topo.add_netns("hb")?;
        let lan = VethOpts {
            mtu: opts.mtu,
            tx_checksum: opts.host_tx_checksum,
            queues: opts.queues,
            ..VethOpts::default()
        };
        let wan = VethOpts {
            mtu: opts.mtu,
            queues: opts.queues,
            ..VethOpts::default()
        };
        let lan_a = topo.add_veth(host_a, if one_armed_a { wire } else { gw_a }, lan)?;
        let wan_a = topo.add_veth(gw_a, wire, wan)?;
        let wan_b = topo.add_veth(wire, gw_b, wan)?;
        let lan_b = topo.add_veth(gw_b, host_b, lan)?;
        Ok(Self {
            topo,
            host_a,
            gw_a,
            wire,
            gw_b,
            host_b,
            lan_a,
            wan_a,
            wan_b,
            lan_b,
            one_armed_a,
            queues: opts.queues.max(1),
        })
    }

    /// The same namespaces with gw-a one-armed: one interface (its `wan_a` port, inside =
    /// outside) carries its clear side and the wire. host-a sits behind the wire router,
    /// which sends what comes from host-a's link for host-b's LAN to gw-a (a policy route)
    /// and gets it back from gw-a as ESP for gw-b; gw-a hands what it decrypts back to the
    /// router, which delivers it to host-a (router on a stick):
    ///
    /// ```text
    ///  host-a ──lan a── wire ══wan b══ gw-b ──lan b── host-b
    ///  10.1.0.1  10.1.0.2 | 10.3.0.1   10.3.0.2 | 10.4.0.1  10.4.0.2
    ///                    10.2.0.2 ║ wan a
    ///                    10.2.0.1 gw-a (one arm)
    /// ```
    ///
    /// (IPv6 alike, fd00:k::.) By its main table the router sends host-b's LAN to gw-b:
    /// plaintext that gw-a sent on instead of protecting would cross `wan b` in clear, where
    /// a capture ([`crate::scenario::wire_capture_at`] on side B) sees it.
    pub fn one_armed(opts: NetOpts) -> Result<Self> {
        let net = Self::build(opts, true)?;
        net.configure()?;
        let t = &net.topo;
        let (gw_a, wire) = (net.gw_a, net.wire);
        // gw-a's kernel forwards what its program passes back out of the same interface:
        // no ICMP redirects to the router about it.
        t.ns(gw_a).sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        for f in [Family::V4, Family::V6] {
            let v6 = if f == Family::V6 { "-6" } else { "-4" };
            let via = |p: &Port| f.addr(p).to_string();
            t.ns(gw_a)
                .ip(&[v6, "route", "add", "default", "via", &via(&net.wan_a.b)])?;
            let w = t.ns(wire);
            let host_b_lan = f.subnet(&net.lan_b.b);
            w.ip(&[v6, "route", "add", &host_b_lan, "via", &via(&net.wan_b.b)])?;
            // From host-a's link, host-b's LAN is reached through gw-a.
            w.ip(&[
                v6,
                "rule",
                "add",
                "iif",
                &net.lan_a.b.ifname,
                "lookup",
                "100",
            ])?;
            w.ip(&[
                v6,
                "route",
                "add",
                &host_b_lan,
                "via",
                &via(&net.wan_a.a),
                "table",
                "100",
            ])?;
        }
        Ok(net)
    }

    fn configure(&self) -> Result<()> {
        let t = &self.topo;
        for ns in [self.gw_a, self.wire, self.gw_b] {
            t.ns(ns).sysctl("net.ipv4.ip_forward", "1")?;
            t.ns(ns).sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        for f in [Family::V4, Family::V6] {
            let v6 = if f == Family::V6 { "-6" } else { "-4" };
            let via = |p: &Port| f.addr(p).to_string();
            t.ns(self.host_a)
                .ip(&[v6, "route", "add", "default", "via", &via(&self.lan_a.b)])?;
            t.ns(self.host_b)
                .ip(&[v6, "route", "add", "default", "via", &via(&self.lan_b.a)])?;
            for net in [f.subnet(&self.wan_b.b), f.subnet(&self.lan_b.b)] {
                t.ns(self.gw_a)
                    .ip(&[v6, "route", "add", &net, "via", &via(&self.wan_a.b)])?;
            }
            for net in [f.subnet(&self.wan_a.a), f.subnet(&self.lan_a.a)] {
                t.ns(self.gw_b)
                    .ip(&[v6, "route", "add", &net, "via", &via(&self.wan_b.a)])?;
            }
        }
        Ok(())
    }

    /// Routes for the LANs in `wire`, so that packets between the hosts can cross it in
    /// clear: only for tests that check the capture's leak detection against plain routing.
    pub fn route_lans_through_wire(&self) -> Result<()> {
        for f in [Family::V4, Family::V6] {
            let v6 = if f == Family::V6 { "-6" } else { "-4" };
            let w = self.topo.ns(self.wire);
            w.ip(&[
                v6,
                "route",
                "add",
                &f.subnet(&self.lan_a.a),
                "via",
                &f.addr(&self.wan_a.a).to_string(),
            ])?;
            w.ip(&[
                v6,
                "route",
                "add",
                &f.subnet(&self.lan_b.b),
                "via",
                &f.addr(&self.wan_b.b).to_string(),
            ])?;
        }
        Ok(())
    }

    pub fn host(&self, s: Side) -> usize {
        match s {
            Side::A => self.host_a,
            Side::B => self.host_b,
        }
    }
    pub fn gw(&self, s: Side) -> usize {
        match s {
            Side::A => self.gw_a,
            Side::B => self.gw_b,
        }
    }
    /// The host's own port.
    pub fn host_port(&self, s: Side) -> &Port {
        match s {
            Side::A => &self.lan_a.a,
            Side::B => &self.lan_b.b,
        }
    }
    /// The gateway's inside port (towards its host); one-armed, its only port.
    pub fn inside(&self, s: Side) -> &Port {
        match s {
            Side::A if self.one_armed_a => &self.wan_a.a,
            Side::A => &self.lan_a.b,
            Side::B => &self.lan_b.a,
        }
    }
    /// The gateway's outside port (the wire).
    pub fn outside(&self, s: Side) -> &Port {
        match s {
            Side::A => &self.wan_a.a,
            Side::B => &self.wan_b.b,
        }
    }
    /// The wire router's port facing the gateway of side `s`.
    pub fn wire_port(&self, s: Side) -> &Port {
        match s {
            Side::A => &self.wan_a.b,
            Side::B => &self.wan_b.a,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SAs and configurations

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Tunnel,
    Transport,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Tunnel => "tunnel",
            Mode::Transport => "transport",
        }
    }
}

/// Algorithms (the kernel's names, as `ip xfrm` takes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// rfc4106(gcm(aes)): AES key bytes (16/32), ICV bits.
    Gcm { key: usize, icv_bits: u32 },
    /// rfc4543(gcm(aes)) (GMAC: authentication only).
    Gmac { key: usize },
    /// enc cbc(aes) (AES key bytes) with auth-trunc hmac(sha256) 128.
    CbcSha256 { key: usize },
    /// rfc7539esp(chacha20,poly1305).
    ChaCha,
    /// AH hmac(sha256) truncated to `trunc` bits.
    Sha256 { trunc: u32 },
    /// AH hmac(sha1) truncated to `trunc` bits.
    Sha1 { trunc: u32 },
}

impl Alg {
    pub fn is_esp(self) -> bool {
        matches!(
            self,
            Alg::Gcm { .. } | Alg::Gmac { .. } | Alg::CbcSha256 { .. } | Alg::ChaCha
        )
    }
    /// Whether the ESP payload is encrypted (not integrity only).
    fn encrypts(self) -> bool {
        matches!(self, Alg::Gcm { .. } | Alg::CbcSha256 { .. } | Alg::ChaCha)
    }
    fn key_len(self) -> usize {
        match self {
            Alg::Gcm { key, .. } | Alg::Gmac { key } => key + 4, // key || salt
            Alg::CbcSha256 { key } => key + CBC_AUTH_KEY,        // enc key, then auth key
            Alg::ChaCha => 36,
            Alg::Sha256 { .. } => 32,
            Alg::Sha1 { .. } => 20,
        }
    }
}

pub const GCM128: Alg = Alg::Gcm {
    key: 16,
    icv_bits: 128,
};
pub const GCM256: Alg = Alg::Gcm {
    key: 32,
    icv_bits: 128,
};
pub const SHA256: Alg = Alg::Sha256 { trunc: 128 };
pub const CBC128_SHA256: Alg = Alg::CbcSha256 { key: 16 };
pub const CHACHA20_POLY1305: Alg = Alg::ChaCha;
/// The HMAC-SHA-256 key length of `CbcSha256`.
const CBC_AUTH_KEY: usize = 32;

/// One SA of a bundle (the same spec in both directions, each with its own SPI and key).
#[derive(Clone, Debug)]
pub struct SaSpec {
    pub mode: Mode,
    pub alg: Alg,
    /// NAT-T (RFC 3948): `encap espinudp PORT PORT`.
    pub natt: Option<u16>,
    pub flags: Vec<&'static str>,
}

impl SaSpec {
    pub fn new(mode: Mode, alg: Alg) -> Self {
        Self {
            mode,
            alg,
            natt: None,
            flags: Vec::new(),
        }
    }
    pub fn natt(mut self, port: u16) -> Self {
        self.natt = Some(port);
        self
    }
    pub fn flag(mut self, f: &'static str) -> Self {
        self.flags.push(f);
        self
    }
}

/// What the policies protect: traffic between the hosts' LANs (a site-to-site tunnel), or
/// traffic between the gateways' own outside addresses (transport mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    Hosts,
    Gateways,
}

/// A test case: the protected traffic, the families, the bundle.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub endpoints: Endpoints,
    /// Family of the protected traffic (the inner packets).
    pub inner: Family,
    /// Family of the SA end points (the outer header in tunnel mode).
    pub outer: Family,
    /// The bundle, in output order (ip xfrm `tmpl` order: the first is innermost).
    pub sas: Vec<SaSpec>,
    /// Key material seed (random per run; printed so a failure can be replayed).
    pub seed: u64,
    /// SPIs: `spi_base + i` from A, `spi_base + 0x1000 + i` from B (and reqids likewise), so
    /// that several cases can share one configuration.
    pub spi_base: u32,
}

/// The SA of `Case::sas[index]` in one direction, as the configurations and the peer see it.
#[derive(Clone, Debug)]
pub struct SaInstance {
    pub spec: SaSpec,
    pub spi: u32,
    pub reqid: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Hex, without 0x (for AEAD: AES key || salt, as `ip xfrm` takes it).
    pub key: String,
}

impl Case {
    pub fn new(name: &str, endpoints: Endpoints, inner: Family, outer: Family) -> Self {
        Self {
            name: name.to_string(),
            endpoints,
            inner,
            outer,
            sas: Vec::new(),
            seed: run_seed(),
            spi_base: 0x1000,
        }
    }

    pub fn spi_base(mut self, base: u32) -> Self {
        self.spi_base = base;
        self
    }

    pub fn sa(mut self, s: SaSpec) -> Self {
        self.sas.push(s);
        self
    }

    /// The SA end points of traffic from side `from`: the gateways' outside addresses.
    pub fn sa_endpoints(&self, net: &GatewayNet, from: Side) -> (IpAddr, IpAddr) {
        (
            self.outer.addr(net.outside(from)),
            self.outer.addr(net.outside(from.other())),
        )
    }

    /// The protected traffic's addresses on side `s` (prefix) and a host address in it.
    pub fn selector(&self, net: &GatewayNet, s: Side) -> String {
        match self.endpoints {
            Endpoints::Hosts => self.inner.subnet(net.host_port(s)),
            Endpoints::Gateways => format!(
                "{}/{}",
                self.inner.addr(net.outside(s)),
                self.inner.host_len()
            ),
        }
    }

    /// The address that sends and receives the protected traffic on side `s`.
    pub fn traffic_addr(&self, net: &GatewayNet, s: Side) -> IpAddr {
        match self.endpoints {
            Endpoints::Hosts => self.inner.addr(net.host_port(s)),
            Endpoints::Gateways => self.inner.addr(net.outside(s)),
        }
    }

    /// The namespace the protected traffic starts and ends in on side `s`.
    pub fn traffic_ns(&self, net: &GatewayNet, s: Side) -> usize {
        match self.endpoints {
            Endpoints::Hosts => net.host(s),
            Endpoints::Gateways => net.gw(s),
        }
    }

    /// The bundle of traffic from side `from`, in output order.
    pub fn bundle(&self, net: &GatewayNet, from: Side) -> Vec<SaInstance> {
        let (src, dst) = self.sa_endpoints(net, from);
        self.sas
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let dir = if from == Side::A { 0 } else { 1 };
                SaInstance {
                    spec: s.clone(),
                    // 0x1000.. from A, 0x2000.. from B (by default): both in every capture,
                    // told apart.
                    spi: self.spi_base + 0x1000 * dir + i as u32,
                    reqid: self.spi_base / 0x100 + dir,
                    src,
                    dst,
                    key: key_hex(
                        self.seed ^ u64::from(self.spi_base),
                        dir,
                        i as u32,
                        s.alg.key_len(),
                    ),
                }
            })
            .collect()
    }

    /// The `xfrm-user run --config` file of the gateway of side `s`: the states of both
    /// directions, an out policy for its traffic and in/fwd policies for the far side's.
    pub fn config(&self, net: &GatewayNet, s: Side) -> String {
        let mut c = format!(
            "# {} — gateway {:?}, written by the gateway tests (seed {:#x})\n",
            self.name, s, self.seed
        );
        let mixed = self.inner != self.outer;
        for from in [s, s.other()] {
            for x in self.bundle(net, from) {
                let _ = write!(
                    c,
                    "state add src {} dst {} proto {} spi {:#010x} reqid {} mode {} ",
                    x.src,
                    x.dst,
                    if x.spec.alg.is_esp() { "esp" } else { "ah" },
                    x.spi,
                    x.reqid,
                    x.spec.mode.word()
                );
                let _ = match x.spec.alg {
                    Alg::Gcm { icv_bits, .. } => {
                        write!(c, "aead 'rfc4106(gcm(aes))' 0x{} {icv_bits}", x.key)
                    }
                    Alg::Gmac { .. } => write!(c, "aead 'rfc4543(gcm(aes))' 0x{} 128", x.key),
                    Alg::CbcSha256 { key } => {
                        let (e, a) = x.key.split_at(2 * key);
                        write!(
                            c,
                            "enc 'cbc(aes)' 0x{e} auth-trunc 'hmac(sha256)' 0x{a} 128"
                        )
                    }
                    Alg::ChaCha => {
                        write!(c, "aead 'rfc7539esp(chacha20,poly1305)' 0x{} 128", x.key)
                    }
                    Alg::Sha256 { trunc } => {
                        write!(c, "auth-trunc 'hmac(sha256)' 0x{} {trunc}", x.key)
                    }
                    Alg::Sha1 { trunc } => write!(c, "auth-trunc 'hmac(sha1)' 0x{} {trunc}", x.key),
                };
                c.push_str(" replay-window 128");
                let mut flags = x.spec.flags.clone();
                if mixed {
                    // As on Linux: a state whose family differs from the flow's needs it.
                    flags.push("af-unspec");
                }
                if !flags.is_empty() {
                    let _ = write!(c, " flag {}", flags.join(" "));
                }
                if let Some(port) = x.spec.natt {
                    let _ = write!(c, " encap espinudp {port} {port} {}", x.dst);
                }
                c.push('\n');
            }
        }
        for (from, dirs) in [(s, &["out"][..]), (s.other(), &["in", "fwd"][..])] {
            for dir in dirs {
                let _ = write!(
                    c,
                    "policy add src {} dst {} dir {dir} priority 100",
                    self.selector(net, from),
                    self.selector(net, from.other())
                );
                for x in self.bundle(net, from) {
                    let _ = write!(
                        c,
                        " tmpl src {} dst {} proto {} reqid {} mode {}",
                        x.src,
                        x.dst,
                        if x.spec.alg.is_esp() { "esp" } else { "ah" },
                        x.reqid,
                        x.spec.mode.word()
                    );
                }
                c.push('\n');
            }
        }
        c
    }

    /// The SAs of traffic from `from` for tests/interop/ipsec_peer.py (its JSON format).
    pub fn peer_json(&self, net: &GatewayNet, from: Side) -> serde_json::Value {
        use serde_json::json;
        let mixed = self.inner != self.outer;
        let sas: Vec<_> = self
            .bundle(net, from)
            .into_iter()
            .map(|x| {
                let mut flags = x.spec.flags.clone();
                if mixed {
                    flags.push("af-unspec");
                }
                let mut v = json!({
                    "proto": if x.spec.alg.is_esp() { "esp" } else { "ah" },
                    "spi": x.spi,
                    "mode": x.spec.mode.word(),
                    "src": x.src.to_string(),
                    "dst": x.dst.to_string(),
                    "flags": flags,
                    "replay_window": 128,
                    "seq": 1,
                });
                if let Alg::CbcSha256 { key } = x.spec.alg {
                    let (e, a) = x.key.split_at(2 * key);
                    v["enc"] = json!({"name": "cbc(aes)", "key": e});
                    v["auth"] = json!({"name": "hmac(sha256)", "key": a, "trunc_bits": 128});
                    if let Some(p) = x.spec.natt {
                        v["encap"] = json!({"type": "espinudp", "sport": p, "dport": p});
                    }
                    return v;
                }
                v[if x.spec.alg.is_esp() { "aead" } else { "auth" }] = match x.spec.alg {
                    Alg::Gcm { icv_bits, .. } => {
                        json!({"name": "rfc4106(gcm(aes))", "key": x.key, "icv_bits": icv_bits})
                    }
                    Alg::ChaCha => json!({
                        "name": "rfc7539esp(chacha20,poly1305)", "key": x.key, "icv_bits": 128
                    }),
                    Alg::CbcSha256 { .. } => serde_json::Value::Null, // returned above
                    Alg::Gmac { .. } => {
                        json!({"name": "rfc4543(gcm(aes))", "key": x.key, "icv_bits": 128})
                    }
                    Alg::Sha256 { trunc } => {
                        json!({"name": "hmac(sha256)", "key": x.key, "trunc_bits": trunc})
                    }
                    Alg::Sha1 { trunc } => {
                        json!({"name": "hmac(sha1)", "key": x.key, "trunc_bits": trunc})
                    }
                };
                if let Some(p) = x.spec.natt {
                    v["encap"] = json!({"type": "espinudp", "sport": p, "dport": p});
                }
                v
            })
            .collect();
        json!({ "sas": sas })
    }

    /// What the capture must never see in clear: packets between the two sides' protected
    /// prefixes (either direction), other than the bundle's own ESP/AH/NAT-T packets.
    pub fn protected_flows(&self, net: &GatewayNet) -> Vec<crate::capture::FlowMatch> {
        let p = |s| parse_prefix(&self.selector(net, s));
        let (a, b) = (p(Side::A), p(Side::B));
        vec![
            crate::capture::FlowMatch { src: a, dst: b },
            crate::capture::FlowMatch { src: b, dst: a },
        ]
    }

    /// The outermost SPIs of bundles that do not encrypt (AH, ESP-GMAC only): see
    /// [`crate::capture::CaptureOpts::clear_payload_spis`].
    pub fn integrity_only_spis(&self, net: &GatewayNet) -> Vec<u32> {
        [Side::A, Side::B]
            .into_iter()
            .filter_map(|s| {
                let b = self.bundle(net, s);
                let encrypts = b.iter().any(|x| x.spec.alg.encrypts());
                (!encrypts).then(|| b.last().expect("a bundle").spi)
            })
            .collect()
    }

    /// UDP ports that carry ESP (NAT-T) in this case.
    pub fn natt_ports(&self) -> Vec<u16> {
        self.sas.iter().filter_map(|s| s.natt).collect()
    }
}

pub fn parse_prefix(s: &str) -> (IpAddr, u8) {
    let (a, l) = s.split_once('/').expect("prefix with a length");
    (a.parse().expect("address"), l.parse().expect("length"))
}

/// A seed for key material, different for every run (time and pid).
pub fn run_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    splitmix64(t ^ (u64::from(std::process::id()) << 32))
}

pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key_hex(seed: u64, dir: u32, index: u32, len: usize) -> String {
    let mut s = String::with_capacity(2 * len);
    let base = splitmix64(seed ^ (u64::from(dir) << 40) ^ (u64::from(index) << 48));
    for i in 0..len {
        let b = splitmix64(base.wrapping_add(i as u64)) as u8;
        let _ = write!(s, "{b:02x}");
    }
    s
}
