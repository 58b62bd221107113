//! `weft-controller`: the controller binary. All logic lives in `weft-controller`;
//! `weft-controller admin …`, the deprecated alias of `weft admin …`, runs
//! `weft-cli`'s code.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "admin") {
        return weft_cli::cmd::admin::alias_main(args);
    }
    weft_controller::cli::main()
}
