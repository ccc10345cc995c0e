//! `ratatoskr new-api-key <id>`.

use std::process::ExitCode;

use super::{fatal, print_lines};

/// `ratatoskr new-api-key <id>`: prints a new key (give it to the
/// publisher) and its `--api-keys-file` entry (only the digest; edit its
/// scope before use).
pub fn run(id: Option<&str>) -> ExitCode {
    let Some(id) = id else {
        return fatal(2, "usage: ratatoskr new-api-key <id>");
    };
    match crate::auth::keys::new_key(id) {
        Ok((key, entry)) => print_lines(&[&key, &entry.to_string()]),
        Err(e) => fatal(2, e),
    }
}
