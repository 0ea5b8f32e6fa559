//! Runs inputs through a target and prints, per file, "ok" or the panic's message: a saved
//! crash's cause without libFuzzer (`cargo run -p xfrm-fuzz --example replay TARGET FILE...`).

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next() else {
        eprintln!("usage: replay TARGET FILE...");
        std::process::exit(2);
    };
    let Some((_, run)) = xfrm_fuzz::TARGETS.iter().find(|(n, _)| *n == target) else {
        eprintln!("unknown target {target}");
        std::process::exit(2);
    };
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = 0;
    for file in args {
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{file}: {e}");
                std::process::exit(2);
            }
        };
        match std::panic::catch_unwind(|| run(&bytes)) {
            Ok(()) => println!("{file}: ok"),
            Err(p) => {
                failed += 1;
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("{file}: {}", msg.lines().next().unwrap_or(""));
            }
        }
    }
    std::process::exit(i32::from(failed > 0));
}
