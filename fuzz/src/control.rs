//! The `control` target: arbitrary bytes as control-socket datagrams, each through what the
//! daemon does with one (`protocol::parse`, `parse_request`, `Store::execute`, the XDP
//! tables compiled, `Store::commit`: `ctl::apply::control` without the socket, the
//! workers and the maps), against a store holding site-a.conf.
//!
//! Properties: no panic; a refused request leaves the store as it was (its listing with
//! counters and keys, byte for byte: no partial change); a read changes nothing and its
//! JSON parses; an accepted change is visible the way it claims (an added SA or policy can
//! be got, a deleted one cannot, a flush leaves none) and the store still lists.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use xfrm_user::{
    config::request::{parse_request, PolicyId, Request, StateFilter, StateId},
    ctl::{
        apply::compile,
        protocol,
        render::Show,
        store::{Executed, Store},
    },
    xfrm::{ManualClock, XfrmDb},
};

use crate::site_a;

/// Datagrams in one input are cut at this byte (never part of UTF-8 text, so the request
/// parser still meets invalid UTF-8 through the others).
pub const SEPARATOR: u8 = 0xff;
/// At most this many datagrams per input (each rebuilds tables).
const MAX_REQUESTS: usize = 16;
/// The store's clock (seconds): fixed, so that what it prints depends on the input alone.
const T0: u64 = 1_700_000_000;

/// Every listing of the store, with counters and keys: what "unchanged" compares.
fn snapshot(s: &Store) -> String {
    let all = Show {
        stats: true,
        keys: true,
        json: false,
    };
    let mut out = String::new();
    for r in [
        Request::StateList(StateFilter::default()),
        Request::PolicyList(None),
    ] {
        match s.execute(&r, None, all, now()) {
            Ok(Executed::Read(b)) => out.push_str(&b),
            Ok(Executed::Change(_)) => panic!("{r:?} is a change"),
            Err(e) => panic!("{r:?} refused: {e}"),
        }
    }
    out
}

/// One instant for the whole process: reservations made by `allocspi` never expire within
/// an input, and the outcome does not depend on how long the previous one took.
fn now() -> Instant {
    static NOW: OnceLock<Instant> = OnceLock::new();
    *NOW.get_or_init(Instant::now)
}

fn read(s: &Store, r: &Request) -> Result<String, String> {
    match s.execute(r, None, Show::default(), now())? {
        Executed::Read(b) => Ok(b),
        Executed::Change(_) => panic!("{r:?} is a change"),
    }
}

/// A datagram's header and request, parsed without the store.
fn parse(dgram: &[u8]) -> Result<(Request, protocol::Message<'_>), String> {
    let m = protocol::parse(dgram, dgram.len())?;
    let req = parse_request(m.command, "request").map_err(|e| {
        let t = e.to_string();
        assert!(t.starts_with("request:"), "error without its place: {t}");
        t
    })?;
    Ok((req, m))
}

/// What the daemon does with a parsed request, up to the reply; `Err` is the error reply.
fn apply(s: &mut Store, req: &Request, m: &protocol::Message<'_>) -> Result<String, String> {
    let p = match req {
        // Takes no request after its "ok": nothing more to see here.
        Request::Monitor => return Ok(String::new()),
        // The daemon's file is site-a.conf: everything it added is unchanged.
        Request::Reload => s.prepare_reload(site_a(), now())?,
        r => match s.execute(r, Some(m.command), m.show, now())? {
            Executed::Read(body) => return Ok(body),
            Executed::Change(p) => *p,
        },
    };
    let mut p = p;
    // What the maps are written from: a change they cannot take is refused whole.
    compile(&p.delta).map_err(|e| format!("request: {e:#} (nothing applied)"))?;
    let body = std::mem::take(&mut p.body);
    s.commit(p)?;
    Ok(body)
}

/// Arbitrary bytes as control datagrams (cut at [`SEPARATOR`]) to a store of site-a.conf.
pub fn control(data: &[u8]) {
    let _ = replies(data);
}

/// What [`control`] runs, with each datagram's reply (`Err`: the error reply).
pub fn replies(data: &[u8]) -> Vec<Result<String, String>> {
    let mut out = Vec::new();
    let cfg = site_a();
    let clock = Arc::new(ManualClock::new(T0));
    let db = XfrmDb::with_clock(cfg.states, cfg.policies, clock).expect("site-a.conf builds");
    let mut s = Store::new(&db);
    // What the store lists; changed only by an accepted change. Rendered when a request first
    // reaches the store: one refused by `parse` never sees it (most of the fuzzer's inputs),
    // and rendering the listing is most of an execution's cost.
    let mut before: Option<String> = None;
    for dgram in data.split(|&b| b == SEPARATOR).take(MAX_REQUESTS) {
        let (req, m) = match parse(dgram) {
            Ok(parsed) => parsed,
            Err(e) => {
                assert!(!e.trim().is_empty(), "an empty error");
                out.push(Err(e));
                continue;
            }
        };
        let was = before.get_or_insert_with(|| snapshot(&s)).clone();
        let r = apply(&mut s, &req, &m);
        out.push(r.clone());
        match r {
            Err(e) => {
                assert!(!e.trim().is_empty(), "an empty error");
                assert_eq!(
                    snapshot(&s),
                    was,
                    "a refused request changed the store: {e}"
                );
            }
            Ok(body) if !req.is_change() && req != Request::Reload => {
                assert_eq!(snapshot(&s), was, "{req:?} (a read) changed the store");
                if m.show.json && !body.is_empty() {
                    let v: Result<serde_json::Value, _> = serde_json::from_str(&body);
                    assert!(v.is_ok(), "{req:?} -j printed no JSON: {body}");
                }
            }
            Ok(_) => {
                check_change(&s, &req);
                before = Some(snapshot(&s));
            }
        }
    }
    out
}

/// An accepted change shows the way it claims (the caller lists the whole store next).
fn check_change(s: &Store, req: &Request) {
    let id_of = |c: &xfrm_user::sa::SaConfig| StateId {
        src: Some(c.saddr),
        dst: c.id.daddr,
        proto: c.id.proto,
        spi: c.id.spi,
    };
    let pol_of = |p: &xfrm_user::policy::Policy| PolicyId {
        dir: p.dir,
        selector: p.selector,
    };
    match req {
        Request::StateAdd(c) | Request::StateUpdate(c) => {
            let got = read(s, &Request::StateGet(id_of(c)));
            assert!(got.is_ok(), "{req:?} accepted, then: {got:?}");
        }
        Request::StateDelete(id) => {
            assert!(read(s, &Request::StateGet(*id)).is_err(), "{req:?} left it");
        }
        Request::StateFlush(proto) => {
            let f = StateFilter {
                proto: *proto,
                ..Default::default()
            };
            let left = read(s, &Request::StateList(f)).expect("state list");
            assert!(left.is_empty(), "{req:?} left {left}");
        }
        Request::PolicyAdd(p) | Request::PolicyUpdate(p) => {
            let got = read(s, &Request::PolicyGet(pol_of(p)));
            assert!(got.is_ok(), "{req:?} accepted, then: {got:?}");
        }
        Request::PolicyDelete(id) => {
            let got = read(s, &Request::PolicyGet(id.clone()));
            assert!(got.is_err(), "{req:?} left it");
        }
        Request::PolicyFlush => {
            let n = read(s, &Request::PolicyCount).expect("policy count");
            assert_eq!(n, "SPD IN  0 OUT 0 FWD 0\n", "{req:?}");
        }
        _ => {}
    }
}

/// Seeds: the requests of the control tests and docs/control-protocol.md, one per input,
/// and all of them in one input.
pub fn seeds() -> Vec<Vec<u8>> {
    const KEY: &str = "0x0102030405060708090a0b0c0d0e0f1011121314";
    let reqs: Vec<(Show, String)> = [
        format!("state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x11 reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' {KEY} 128"),
        "state update src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' 0xa81d2f25620f8c99b0751db8f039a4a8940f8b53 128 replay-window 128 flag esn limit packet-hard 1000".to_string(),
        "state get dst 192.0.2.2 proto esp spi 0x1000".to_string(),
        "state delete dst 192.0.2.2 proto esp spi 0x1000".to_string(),
        "state delete dst 198.51.100.9 proto ah spi 0x5001 src 192.0.2.1".to_string(),
        "state list src 192.0.2.1 proto esp".to_string(),
        "state show".to_string(),
        "state count".to_string(),
        "state flush proto ah".to_string(),
        "state flush".to_string(),
        "state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp min 0x140 max 0x163".to_string(),
        "policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1".to_string(),
        "policy update src 10.1.0.0/24 dst 10.2.0.0/24 dir out priority 90 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel".to_string(),
        "policy get dir out src 10.1.0.7/24 dst 10.2.0.0/24".to_string(),
        "policy delete dir in src 10.2.0.0/24 dst 10.1.0.0/24".to_string(),
        "policy list dir fwd".to_string(),
        "policy count".to_string(),
        "policy flush".to_string(),
        "ip xfrm monitor".to_string(),
        "reload".to_string(),
    ]
    .into_iter()
    .map(|c| (Show::default(), c))
    .chain([
        (
            Show {
                stats: true,
                json: true,
                keys: true,
            },
            "state list".to_string(),
        ),
        (
            Show {
                json: true,
                ..Show::default()
            },
            "policy list".to_string(),
        ),
    ])
    .collect();
    let one: Vec<Vec<u8>> = reqs
        .iter()
        .map(|(show, c)| protocol::request(*show, c))
        .collect();
    let all = one.join(&SEPARATOR);
    one.into_iter().chain([all]).collect()
}
