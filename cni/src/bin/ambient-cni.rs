//! `ambient-cni`: the chained CNI plugin. All logic is in [`cni::plugin::run`]; this binary
//! reads stdin, catches panics (a panic becomes a CNI error, never a crash without output)
//! and prints the result.

use std::io::{Read, Write};

use meshcore::env::ProcessEnv;

fn main() {
    let mut stdin = Vec::new();
    let out = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => cni::plugin::CniError::new(
            cni::plugin::code::DECODE,
            "cannot read stdin",
            e.to_string(),
        )
        .output("1.1.0"),
        Ok(_) => {
            std::panic::set_hook(Box::new(|info| {
                eprintln!("ambient-cni: internal error: {info}")
            }));
            match std::panic::catch_unwind(|| cni::plugin::run(&ProcessEnv, &stdin)) {
                Ok(o) => o,
                Err(_) => cni::plugin::CniError::new(
                    cni::plugin::code::INTERNAL,
                    "internal error in ambient-cni",
                    "the plugin panicked; see its stderr",
                )
                .output("1.1.0"),
            }
        }
    };
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(out.stdout.as_bytes());
    let _ = so.flush();
    std::process::exit(out.exit_code);
}
