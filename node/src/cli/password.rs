//! Where a password comes from. Never argv: command lines are visible to every user of
//! the machine (ps, /proc) and end up in shell history.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result, bail};

/// Environment variable a script may put the password in.
pub const PASSWORD_ENV: &str = "CHORUS_PASSWORD";
/// ... and the new password of `chorus account password`.
pub const NEW_PASSWORD_ENV: &str = "CHORUS_NEW_PASSWORD";

/// Reads a password: one line of stdin with `--password-stdin`, else `CHORUS_PASSWORD`,
/// else a prompt on the terminal that does not echo.
pub fn obtain(from_stdin: bool, prompt: &str) -> Result<String> {
    obtain_from(from_stdin, PASSWORD_ENV, "first", prompt)
}

/// Reads a new password: the second line of stdin with `--password-stdin` (the first is
/// the old one), else `CHORUS_NEW_PASSWORD`, else a prompt on the terminal, asked twice.
pub fn obtain_new(from_stdin: bool) -> Result<String> {
    if from_stdin || std::env::var(NEW_PASSWORD_ENV).is_ok() {
        return obtain_from(from_stdin, NEW_PASSWORD_ENV, "second", "");
    }
    let first = obtain_from(false, NEW_PASSWORD_ENV, "second", "new password: ")?;
    let again =
        rpassword::prompt_password("new password again: ").context("cannot read the password from the terminal")?;
    if first != again {
        bail!("the two new passwords differ: nothing was changed");
    }
    Ok(first)
}

fn obtain_from(from_stdin: bool, env: &str, line_name: &str, prompt: &str) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from stdin")?;
        let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
        if password.is_empty() {
            bail!("no password on stdin: write it as the {line_name} line");
        }
        return Ok(password.to_owned());
    }
    if let Ok(password) = std::env::var(env) {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password given: use --password-stdin or set {env} (stdin is not a terminal to ask on)");
    }
    rpassword::prompt_password(prompt).context("cannot read the password from the terminal")
}
