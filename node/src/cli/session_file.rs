//! Where `chorus login` keeps the session token between commands.
//!
//! The file holds a bearer secret, so it is created readable by its owner only (0600) and
//! replaced atomically (write a temporary file, then rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSession {
    pub username: String,
    pub token: String,
    /// The server that issued it, for the record (any node of the cluster accepts it).
    pub server: String,
}

/// The session file's path: the flag or `CHORUS_SESSION_FILE`, else
/// `$XDG_CONFIG_HOME/chorus/session.json`, else `~/.config/chorus/session.json`.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    if let Some(config) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(config).join("chorus").join("session.json"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("chorus").join("session.json")),
        None => bail!("cannot tell where to keep the session: set CHORUS_SESSION_FILE or HOME"),
    }
}

pub fn load(path: &Path) -> Result<SavedSession> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!("not logged in: run `chorus login USERNAME` first")
        }
        Err(error) => return Err(error).with_context(|| format!("cannot read session file {}", path.display())),
    };
    serde_json::from_str(&text).with_context(|| {
        format!("session file {} is damaged: run `chorus login USERNAME` again to replace it", path.display())
    })
}

pub fn save(path: &Path, session: &SavedSession) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let temporary = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file =
        options.open(&temporary).with_context(|| format!("cannot write session file {}", temporary.display()))?;
    file.write_all(serde_json::to_string_pretty(session)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write session file {}", path.display()))?;
    Ok(())
}

pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot remove session file {}", path.display())),
    }
}
