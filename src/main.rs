//! The `forgefleet` binary: see `forgefleet --help`.

fn main() -> std::process::ExitCode {
    forgefleet::cli::main()
}
