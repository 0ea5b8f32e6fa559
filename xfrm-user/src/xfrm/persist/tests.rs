//! The state file end to end: what a run leaves, what the next one reads, what a corrupt
//! file does, and the changes of a running daemon.

use super::*;
use crate::sa::{AuthAlgo, SaAlgorithm, XfrmMode};
use crate::xfrm::state::tests::{ah_cfg, esp_cfg};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

fn ids() -> Vec<SaIdentity> {
    vec![
        SaIdentity::of(&esp_cfg(0x100, "10.0.0.1", "10.0.0.2", XfrmMode::Tunnel)),
        SaIdentity::of(&esp_cfg(0x200, "fd00::2", "fd00::1", XfrmMode::Tunnel)),
        SaIdentity::of(&ah_cfg(
            0x300,
            "10.0.0.1",
            "10.0.0.2",
            XfrmMode::Transport,
            AuthAlgo::HmacSha256,
        )),
    ]
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn recs(ids: &[SaIdentity], vals: &[(u64, u64)]) -> Vec<Record> {
    ids.iter()
        .zip(vals)
        .map(|(id, &(oseq, in_top))| Record {
            id: *id,
            vals: Carried {
                oseq,
                in_top,
                ..Default::default()
            },
            retired: false,
            deleted: false,
            text: None,
        })
        .collect()
}

fn read(path: &Path) -> Vec<Record> {
    parse(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn serialize_parse_round_trip() {
    let mut r = recs(&ids(), &[(1, 2), (u64::MAX, (7 << 32) | 9), (0, 0)]);
    r[1].retired = true;
    r[0].text = Some(SaText {
        text: Zeroizing::new("state add …".to_string()),
        pos: 7,
        order: 3,
    });
    r[2].retired = true;
    r[2].deleted = true;
    let s = Saved {
        version: VERSION,
        sas: r,
        texts: vec![TextRecord {
            what: TextKind::Policy,
            order: 4,
            pos: 9,
            body: Zeroizing::new(b"policy add".to_vec()),
        }],
    };
    let b = ser(&s.sas);
    assert_eq!(b.len(), HEADER_LEN + 4 * RECORD_LEN);
    assert_eq!(parse_file(&serialize(&s)).unwrap(), s);
    assert_eq!(parse(&ser(&[])).unwrap(), vec![]);
    // Version 1, as the previous build wrote it.
    let v1: Vec<Record> = s
        .sas
        .iter()
        .map(|r| Record {
            text: None,
            deleted: false,
            ..r.clone()
        })
        .collect();
    let v1 = Record {
        retired: false,
        ..v1[2].clone()
    };
    assert_eq!(
        parse(&serialize_v1(std::slice::from_ref(&v1))).unwrap(),
        vec![v1]
    );
}

#[test]
fn carry_over_by_identity() {
    let d = dir();
    let path = d.path().join("gw.state");
    let all = ids();
    {
        let f = StateFile::open(&path, &all, false).unwrap();
        assert_eq!(
            *f.report(),
            OpenReport {
                existed: false,
                fresh: 3,
                ..Default::default()
            }
        );
        for i in 0..3 {
            let s = f.slot(i).unwrap();
            assert_eq!((s.oseq().load(Relaxed), s.in_top().load(Relaxed)), (0, 0));
            s.oseq().store(1000 + i as u64, Relaxed);
            s.in_top().store(2000 + i as u64, Relaxed);
        }
        assert!(f.slot(3).is_none());
        // Dropped without msync: munmap alone leaves the stores in the page cache, as
        // the death of the process does.
    }

    // Same SAs, another order, one new, one gone.
    let mut rekeyed = esp_cfg(0x200, "fd00::2", "fd00::1", XfrmMode::Tunnel);
    if let SaAlgorithm::Aead { key, .. } = &mut rekeyed.algorithm {
        key[5] ^= 0x80;
    }
    let next = vec![all[2], SaIdentity::of(&rekeyed), all[0]];
    let f = StateFile::open(&path, &next, false).unwrap();
    assert_eq!(
        *f.report(),
        OpenReport {
            existed: true,
            version: VERSION,
            carried: 2,
            fresh: 1,
            retired: 1,
            forgotten: 0,
            discarded: None
        }
    );
    let v = |f: &StateFile, i: usize| {
        let s = f.slot(i).unwrap();
        (s.oseq().load(Relaxed), s.in_top().load(Relaxed))
    };
    assert_eq!(v(&f, 0), (1002, 2002));
    assert_eq!(
        v(&f, 1),
        (0, 0),
        "re-keyed: same SPI and addresses, new key"
    );
    assert_eq!(v(&f, 2), (1000, 2000));
    assert!(f.slot(3).is_none(), "a retired record is no SA's slot");
    drop(f);
    // The file holds the three, then the one no longer configured, retired.
    let r = read(&path);
    assert_eq!(r.len(), 4);
    assert_eq!(
        r[3],
        Record {
            id: all[1],
            vals: Carried {
                oseq: 1001,
                in_top: 2001,
                ..Default::default()
            },
            retired: true,
            deleted: false,
            text: None,
        }
    );
    // Put back with the same key: it goes on from its numbers, not from 0.
    let f = StateFile::open(&path, &all, false).unwrap();
    assert_eq!((f.report().carried, f.report().retired), (3, 1));
    assert_eq!(v(&f, 1), (1001, 2001));
    drop(f);
    assert_eq!(read(&path).iter().filter(|r| r.retired).count(), 1);
}

#[test]
fn retired_records_are_kept_up_to_a_bound_most_recent_first() {
    let d = dir();
    let path = d.path().join("many.state");
    let mk = |spi: u32| SaIdentity::of(&esp_cfg(spi, "10.0.0.1", "10.0.0.2", XfrmMode::Tunnel));
    // A file with MAX_RETIRED + 10 retired records and one configured one.
    let mut r: Vec<Record> = (0..MAX_RETIRED as u32 + 10)
        .map(|i| Record {
            id: mk(0x10_000 + i),
            vals: Carried {
                oseq: u64::from(i),
                ..Default::default()
            },
            retired: true,
            deleted: false,
            text: None,
        })
        .collect();
    r.insert(
        0,
        Record {
            id: mk(1),
            vals: Carried {
                oseq: 7,
                ..Default::default()
            },
            retired: false,
            deleted: false,
            text: None,
        },
    );
    crate::keyfile::write_private(&path, ser(&r)).unwrap();
    let f = StateFile::open(&path, &[mk(2)], false).unwrap();
    assert_eq!(
        (f.report().retired, f.report().forgotten),
        (MAX_RETIRED, 11)
    );
    drop(f);
    let w = read(&path);
    assert_eq!(w.len(), 1 + MAX_RETIRED);
    // The one retired just now comes first; the oldest went.
    assert_eq!((w[1].id, w[1].vals.oseq, w[1].retired), (mk(1), 7, true));
    assert_eq!(w[2].id, mk(0x10_000));
    assert_eq!(w.last().unwrap().id, mk(0x10_000 + MAX_RETIRED as u32 - 2));
}

#[test]
fn esn_values_keep_all_64_bits() {
    let d = dir();
    let path = d.path().join("esn.state");
    let ids = &ids()[..1];
    let hi = (0xfffe_fffd_u64 << 32) | 0xffff_fff0;
    {
        let f = StateFile::open(&path, ids, false).unwrap();
        let s = f.slot(0).unwrap();
        s.oseq().store(hi, Relaxed);
        s.in_top().store(hi - 5, Relaxed);
    }
    let f = StateFile::open(&path, ids, false).unwrap();
    let s = f.slot(0).unwrap();
    assert_eq!(s.oseq().load(Relaxed), hi);
    assert_eq!(s.in_top().load(Relaxed), hi - 5);
    // The counter goes on from there in the mapping.
    assert_eq!(s.oseq().fetch_add(1, Relaxed) + 1, hi + 1);
    drop(s);
    drop(f);
    assert_eq!(read(&path)[0].vals.oseq, hi + 1);
}

#[test]
fn corrupt_files_are_refused_or_set_aside_never_a_panic() {
    let d = dir();
    let ids = ids();
    let good = ser(&recs(&ids, &[(5, 6), (7, 8), (9, 10)]));
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short header", good[..HEADER_LEN - 1].to_vec()),
        ("truncated record", good[..good.len() - 1].to_vec()),
        (
            "truncated at a record",
            good[..good.len() - RECORD_LEN].to_vec(),
        ),
        ("trailing bytes", [&good[..], &[0u8][..]].concat()),
    ];
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    cases.push(("magic", bad_magic));
    let mut bad_version = good.clone();
    bad_version[8] = 3;
    cases.push(("version", bad_version));
    let mut bad_rec = good.clone();
    bad_rec[16] = 64;
    cases.push(("record size", bad_rec));
    let mut huge = good.clone();
    huge[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    cases.push(("count", huge));
    let mut fam = good.clone();
    fam[HEADER_LEN + 50] = 5;
    cases.push(("family", fam));
    let mut reserved = good.clone();
    reserved[HEADER_LEN + RECORD_LEN - 1] = 1;
    cases.push(("reserved", reserved));
    let mut flags = good.clone();
    flags[HEADER_LEN + 49] = 4;
    cases.push(("unknown flag", flags));
    let dup = ser(&recs(&[ids[0], ids[0]], &[(1, 1), (2, 2)]));
    cases.push(("duplicate", dup));
    // Random garbage of many lengths.
    let mut x = 0x1234_5678_9abc_def1u64;
    for len in [1usize, 63, 64, 65, 191, 192, 1087, 1088, 1089, 4096] {
        let g: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        cases.push(("garbage", g));
    }
    for (i, (what, bytes)) in cases.iter().enumerate() {
        assert!(parse(bytes).is_err(), "{what}: parsed");
        let path = d.path().join(format!("c{i}.state"));
        crate::keyfile::write_private(&path, bytes).unwrap();
        match StateFile::open(&path, &ids, false) {
            Err(StateFileError::Corrupt { reason, .. }) => {
                assert!(!reason.is_empty(), "{what}")
            }
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: opened"),
        }
        // Refused: the file is untouched.
        assert_eq!(&std::fs::read(&path).unwrap(), bytes, "{what}");
        let f = StateFile::open(&path, &ids, true).unwrap();
        assert!(f.report().discarded.is_some(), "{what}");
        assert_eq!(f.report().fresh, 3, "{what}");
        assert_eq!(
            &std::fs::read(file::with_suffix(&path, ".corrupt")).unwrap(),
            bytes,
            "{what}: kept aside"
        );
        drop(f);
        assert_eq!(parse(&std::fs::read(&path).unwrap()).unwrap().len(), 3);
    }
    // The message tells the operator what to do.
    let path = d.path().join("c0.state");
    crate::keyfile::write_private(&path, b"xx").unwrap();
    let e = StateFile::open(&path, &ids, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("--discard-corrupt-state") && e.contains("Re-key"),
        "{e}"
    );
}

#[test]
fn a_second_daemon_on_the_same_file_is_refused() {
    let d = dir();
    let path = d.path().join("x.state");
    let a = StateFile::open(&path, &ids(), false).unwrap();
    let t = Instant::now();
    match StateFile::open(&path, &ids(), false) {
        Err(StateFileError::Locked { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened twice"),
    }
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "waits for an exiting daemon"
    );
    drop(a);
    StateFile::open(&path, &ids(), false).unwrap();
}

#[test]
fn files_are_private_and_an_open_state_file_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = dir();
    let sub = d.path().join("run/xfrm-user");
    let path = sub.join("x.state");
    let f = StateFile::open(&path, &ids(), false).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&sub), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&file::with_suffix(&path, ".lock")), 0o600);
    drop(f);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = StateFile::open(&path, &ids(), false)
        .err()
        .unwrap()
        .to_string();
    let p = path.display();
    assert_eq!(
        e,
        format!(
            "state file {p}: mode 0640 gives group or others access to a file that holds \
                 keys; run `chmod 600 {p}` (only its owner may read it)"
        )
    );
    // A stale temporary file that others could read is narrowed before it is written.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tmp = file::with_suffix(&path, ".tmp");
    std::fs::write(&tmp, b"").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
    drop(StateFile::open(&path, &ids(), false).unwrap());
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn default_path_names_the_namespace_and_the_interface() {
    let p = default_path("wan0").unwrap();
    let s = p.display().to_string();
    assert!(
        s.starts_with("/run/xfrm-user/netns-") && s.ends_with("-wan0.state"),
        "{s}"
    );
    // Another thread in the same namespace: the same name.
    let q = std::thread::spawn(|| default_path("wan0").unwrap())
        .join()
        .unwrap();
    assert_eq!(p, q);
    assert_ne!(p, default_path("wan1").unwrap());
}

fn ser(r: &[Record]) -> Vec<u8> {
    serialize(&Saved {
        version: VERSION,
        sas: r.to_vec(),
        texts: vec![],
    })
    .to_vec()
}
