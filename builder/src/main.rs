//! The `hyve` command.

mod cli;

fn main() -> std::process::ExitCode {
    // `hyve diff A B | head` should end quietly when head stops reading, as Unix tools do;
    // Rust ignores SIGPIPE by default and would panic on the failed write instead.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cli::main()
}
