//! Every seed (fuzz/seeds) and every input a fuzzer ever crashed on (fuzz/regressions, where
//! `cargo xtask fuzz` copies them) through its target, on each `cargo test`: a bug the fuzzer
//! found stays fixed. The seeds built in memory run too, so a change that breaks them shows.

use std::path::Path;

#[test]
fn seeds_and_regressions_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for (name, run) in xfrm_fuzz::TARGETS {
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                eprintln!("replay {name} {}", path.display());
                run(&bytes);
                ran += 1;
            }
        }
    }
    for (name, bytes) in xfrm_fuzz::seeds() {
        let (_, run) = xfrm_fuzz::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a seed for a known target");
        run(&bytes);
        ran += 1;
    }
    assert!(
        ran >= 2 * xfrm_fuzz::TARGETS.len(),
        "only {ran} inputs replayed"
    );
}

#[test]
fn the_output_seeds_make_ipsec() {
    // The round trip would pass vacuously if no seed were transformed.
    let n = xfrm_fuzz::seeds()
        .iter()
        .filter(|(t, _)| *t == "input")
        .count();
    assert_eq!(
        n, 5,
        "every inner seed is protected by a site-a.conf policy"
    );
}

#[test]
fn the_control_seeds_are_accepted() {
    // Each seed alone is a request the store of site-a.conf takes (else the target would
    // start from error paths only); the last seed is all of them in one input.
    let seeds = xfrm_fuzz::control_seeds();
    for s in &seeds[..seeds.len() - 1] {
        let r = xfrm_fuzz::control_replies(s);
        assert_eq!(r.len(), 1);
        assert!(r[0].is_ok(), "{}: {:?}", String::from_utf8_lossy(s), r[0]);
    }
    assert!(xfrm_fuzz::control_replies(seeds.last().unwrap()).len() > 10);
}
