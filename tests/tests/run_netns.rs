//! `xfrm-user run` (the library function behind it) as the gateway, outbound:
//!
//!   ns "h1" [a] ──veth 1── [b] ns "gw" [a] ──veth 2── [b] ns "h2"
//!
//! h1's veth keeps TX checksum offload on, so its UDP checksums arrive partial: the gateway
//! must complete them before encrypting. h2 has no IPsec: a raw socket takes the ESP packets
//! and our own input path opens them. When `run` returns (orderly stop) its programs stay
//! attached (fail closed) and its state file holds the last sequence number sent; the
//! library's `detach` then takes the programs off.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use xfrm_tests::{
    bpf_object,
    daemon::xdp_attached,
    init_logging, root_or_skip, sock,
    topology::{Topology, VethOpts},
};
use xfrm_user::{
    config::parse_config,
    datapath::{
        detach::detach,
        run::{run, RunOptions},
        AttachMode,
    },
    frame::OwnedFrame,
    stats::XfrmStats,
    wire::checksum,
    xfrm::{persist, xfrm_input, InputTables, InputVerdict, SaIdentity, XfrmDb},
};

const CONFIG: &str = "\
ip xfrm state add src 10.2.0.1 dst 10.2.0.2 proto esp spi 0x2001 reqid 3 mode tunnel \
aead 'rfc4106(gcm(aes))' 0x2122232425262728292a2b2c2d2e2f30deadbeef 128
ip xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 proto udp dir out \
tmpl src 10.2.0.1 dst 10.2.0.2 proto esp reqid 3 mode tunnel
ip xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 proto udp dir in \
tmpl src 10.2.0.1 dst 10.2.0.2 proto esp reqid 3 mode tunnel
";

fn esp_socket(t: &Topology, ns: usize) -> OwnedFd {
    t.ns(ns)
        .run(|| {
            let fd = sock::esp_socket(false, 0)?;
            sock::set_recv_timeout(&fd, Duration::from_millis(200))?;
            Ok(fd)
        })
        .unwrap()
}

#[test]
fn gateway_protects_outbound_with_partial_checksums() {
    if !root_or_skip("gateway_protects_outbound_with_partial_checksums") {
        return;
    }
    init_logging();
    let mut t = Topology::new().unwrap();
    let h1 = t.add_netns("h1").unwrap();
    let gw = t.add_netns("gw").unwrap();
    let h2 = t.add_netns("h2").unwrap();
    let l1 = t.add_veth(h1, gw, VethOpts::default()).unwrap(); // TX offload on
    let l2 = t.add_veth(gw, h2, VethOpts::default()).unwrap();
    t.ns(h1)
        .ip(&["route", "add", "10.2.0.0/24", "via", &l1.b.ipv4.to_string()])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gw.conf");
    xfrm_user::keyfile::write_private(&conf, CONFIG).unwrap();
    let opts = RunOptions {
        config: conf,
        inside: l1.b.ifname.clone(),
        outside: l2.a.ifname.clone(),
        queues: 1,
        mode: AttachMode::Native,
        bpf: Some(bpf_object()),
        interval: Duration::from_millis(500),
        duration: Some(Duration::from_secs(20)),
        local_dev: Some(xfrm_user::datapath::tap::DEFAULT_LOCAL_DEV.to_string()),
        state: Some(dir.path().join("gw.state")),
        discard_corrupt_state: false,
        detach_on_exit: false,
        handle_signals: false,
        bench_null_transform: false,
        ctl: None,
        drop_privileges: true,
        user: None,
    };
    let esp = esp_socket(&t, h2);
    let stop = AtomicBool::new(false);
    let topo = &t;
    std::thread::scope(|s| {
        let gw_thread = s.spawn(|| {
            topo.ns(gw).run(|| {
                let mut out = Vec::new();
                let r = run(&opts, &stop, &mut out);
                eprint!("{}", String::from_utf8_lossy(&out));
                r
            })
        });
        let sender = topo
            .ns(h1)
            .run(|| Ok(UdpSocket::bind("10.1.0.1:4001")?))
            .unwrap();
        // Until the gateway is up (attach, first resolution), then ten datagrams.
        let to = SocketAddr::new(l2.b.ipv4.into(), 5001);
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(60);
        let mut buf = vec![0u8; 4096];
        let mut i = 0u32;
        while got.len() < 10 && Instant::now() < end {
            sender
                .send_to(format!("partial {i}").as_bytes(), to)
                .unwrap();
            i += 1;
            // SAFETY: valid fd, writes at most buf.len() bytes.
            let k = unsafe { libc::recv(esp.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if k > 0 {
                got.push(buf[..k as usize].to_vec());
            }
        }
        stop.store(true, Ordering::Relaxed);
        gw_thread.join().unwrap().unwrap();
        assert_eq!(got.len(), 10, "ESP packets at h2");

        let cfg = parse_config(CONFIG, "gw.conf").unwrap();
        let db = XfrmDb::new(cfg.states, cfg.policies).unwrap();
        let tables = InputTables::new(&db);
        let st = XfrmStats::new();
        let mut last_seq = 0;
        for p in &got {
            let seq = u32::from_be_bytes(p[24..28].try_into().unwrap());
            assert!(seq > last_seq, "sequence numbers rise");
            last_seq = seq;
            let mut f = OwnedFrame::from_packet(p);
            let v = f.with_frame(|fr| xfrm_input(&db, &tables, &st, fr));
            assert_eq!(v, InputVerdict::Decapsulated, "{}", st.render_nonzero());
            let inner = f.data();
            assert!(inner[28..].starts_with(b"partial "));
            // The inner UDP checksum is complete and right (it arrived partial).
            let l4 = &inner[20..];
            let pseudo =
                checksum::pseudo_header_v4([10, 1, 0, 1].into(), l2.b.ipv4, 17, l4.len() as u32);
            assert_ne!(&l4[6..8], &[0, 0]);
            assert_eq!(checksum::combine(&[pseudo, checksum::data(l4)]), 0xffff);
        }

        // The state file holds the last number handed out: at least the last one h2 saw
        // (more if datagrams sent before the count reached 10 are still on their way).
        let state = persist::parse(&std::fs::read(dir.path().join("gw.state")).unwrap()).unwrap();
        let id = SaIdentity::of(&cfg_states()[0]);
        let rec = state.iter().find(|r| r.id == id).expect("the SA's record");
        assert!(
            rec.vals.oseq >= u64::from(last_seq),
            "state file oseq {} < last seq on the wire {last_seq}",
            rec.vals.oseq
        );

        // Orderly stop: the programs stayed (fail closed); `detach` takes them off.
        let (inside, outside) = (&opts.inside, &opts.outside);
        for i in [inside, outside] {
            assert!(xdp_attached(topo.ns(gw), i).unwrap(), "{i}: kept at stop");
        }
        let mut said = Vec::new();
        topo.ns(gw)
            .run(|| detach(&[inside, outside], &mut said))
            .unwrap();
        let said = String::from_utf8(said).unwrap();
        eprint!("{said}");
        // Both XDP programs, and the TC filter for the host's own traffic.
        assert_eq!(said.matches("detached xfrm_").count(), 3, "{said}");
        assert!(
            said.contains("detached xfrm_local_out (TC egress)"),
            "{said}"
        );
        for i in [inside, outside] {
            assert!(!xdp_attached(topo.ns(gw), i).unwrap(), "{i}: detached");
        }
        // Again: nothing left to take off.
        let mut again = Vec::new();
        topo.ns(gw).run(|| detach(&[inside], &mut again)).unwrap();
        assert!(String::from_utf8(again).unwrap().contains("no XDP program"));
    });
}

fn cfg_states() -> Vec<xfrm_user::sa::SaConfig> {
    parse_config(CONFIG, "gw.conf").unwrap().states
}
