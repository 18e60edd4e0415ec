//! The `pgchat` binary: everything lives in the library; see `pgchat::cli`.

fn main() -> std::process::ExitCode {
    pgchat::cli::main()
}
