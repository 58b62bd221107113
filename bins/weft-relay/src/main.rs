//! `weft-relay`: the relay binary. All logic lives in `weft-relay`.

fn main() -> std::process::ExitCode {
    weft_relay::cli::main()
}
