//! The binary's tools beside the gateway: `ratatoskr sink` (a webhook
//! receiver that prints what it gets), `ratatoskr healthcheck` (the
//! image's HEALTHCHECK) and `ratatoskr new-api-key` (a key and its
//! `--api-keys-file` entry); and how each ends: one line on stderr and an
//! exit code, output that ends quietly when its reader goes away.

pub mod healthcheck;
pub mod new_api_key;
pub mod sink;

use std::io::Write;
use std::process::ExitCode;

/// One line on stderr and the exit code. Written with `writeln!`, not
/// `eprintln!`: a closed stderr must not turn a clear exit into a panic.
pub fn fatal(code: u8, message: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "ratatoskr: {message}");
    ExitCode::from(code)
}

/// Writes a command's output. A reader that went away (`| head -1`,
/// EPIPE) ends the output quietly, as for any other command-line tool;
/// `println!` would panic there instead.
pub fn print_lines(lines: &[&str]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    for line in lines {
        match writeln!(out, "{line}") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
            Err(e) => return fatal(1, format!("cannot write the output: {e}")),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            fatal(1, format!("cannot write the output: {e}"))
        }
        _ => ExitCode::SUCCESS,
    }
}
