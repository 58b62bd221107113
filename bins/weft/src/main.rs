//! `weft`: the command-line tool. All logic lives in `weft-cli`.

fn main() -> std::process::ExitCode {
    weft_cli::main()
}
