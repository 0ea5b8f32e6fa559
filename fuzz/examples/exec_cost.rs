//! Each target over its seeds, N rounds, microseconds per execution (release build, no
//! sanitizer): where a slow target spends its time, without libFuzzer in the way.

fn main() {
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let only = std::env::args().nth(1);
    let seeds = xfrm_fuzz::seeds();
    for (name, run) in xfrm_fuzz::TARGETS {
        if only.as_deref().is_some_and(|o| o != name && o != "all") {
            continue;
        }
        let inputs: Vec<&Vec<u8>> = seeds
            .iter()
            .filter(|(t, _)| *t == name)
            .map(|(_, b)| b)
            .collect();
        let t0 = std::time::Instant::now();
        for _ in 0..rounds {
            for i in &inputs {
                run(i);
            }
        }
        let n = rounds * inputs.len();
        println!(
            "{name:<13} {:>9.1} us/exec ({n} executions)",
            t0.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
}
