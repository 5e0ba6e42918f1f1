//! Where a password comes from. Never argv: command lines are visible to every user of
//! the machine (ps, /proc) and end up in shell history.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result, bail};

/// Environment variable a script may put the password in.
pub const PASSWORD_ENV: &str = "CHORUS_PASSWORD";

/// Reads a password: one line of stdin with `--password-stdin`, else `CHORUS_PASSWORD`,
/// else a prompt on the terminal that does not echo.
pub fn obtain(from_stdin: bool, prompt: &str) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from stdin")?;
        let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
        if password.is_empty() {
            bail!("no password on stdin: write it as the first line");
        }
        return Ok(password.to_owned());
    }
    if let Ok(password) = std::env::var(PASSWORD_ENV) {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password given: use --password-stdin or set {PASSWORD_ENV} (stdin is not a terminal to ask on)");
    }
    rpassword::prompt_password(prompt).context("cannot read the password from the terminal")
}
