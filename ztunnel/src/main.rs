//! The `ztunnel` binary: all the work is in the library (`ztunnel::app`).

fn main() -> std::process::ExitCode {
    ztunnel::app::main()
}
