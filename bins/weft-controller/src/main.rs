//! `weft-controller`: the controller binary. All logic lives in `weft-controller`.

fn main() -> std::process::ExitCode {
    weft_controller::cli::main()
}
