//! The development secret's file ([`super::DEV_SECRET_FILE`]): written by the first `--dev`
//! server in a directory, read by the next ones there and by `notify-backbone token`, so the
//! tokens minted here verify on every `--dev` server here.
//!
//! Owns: reading the file (one way for the server and the clients: trimmed; an empty one is an
//! error, never taken for a secret) and creating it. Does not own: when a server uses it (`app`,
//! with `--dev` and no key) or when a client falls back to it (`client::secret_or_dev`).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

/// Why the development secret could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum DevSecretError {
    /// The file holds nothing: delete it to start over.
    #[error(
        "{} is empty: delete it and start again (a new secret is generated)",
        .0.display()
    )]
    Empty(PathBuf),
    /// The file is there but cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its directory cannot be made.
    #[error("cannot create {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file cannot be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another server created the file since this one looked, and it was gone again.
    #[error("{} appeared empty", .0.display())]
    Vanished(PathBuf),
}

/// The secret in `path`, `None` when there is no such file. An empty or unreadable one is an
/// error naming the file (delete it to start over), never silently replaced.
pub fn read(path: &Path) -> Result<Option<String>, DevSecretError> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
        Ok(_) => Err(DevSecretError::Empty(path.to_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DevSecretError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The secret a server started here before left in `path`, or a fresh random one written
/// there (readable by this user only). Reusing it means a second `--dev` server in the same
/// directory accepts the tokens minted for the first, and `notify-backbone token` mints for
/// both; overwriting it would silently invalidate every token of the first. `create_new`
/// settles two servers starting at once: one writes, the other reads.
pub fn read_or_create(path: &Path) -> Result<String, DevSecretError> {
    use rand::Rng as _;
    if let Some(existing) = read(path)? {
        return Ok(existing);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DevSecretError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let bytes: [u8; 32] = rand::rng().random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write_error = |source| DevSecretError::Write {
        path: path.to_owned(),
        source,
    };
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(write_error)?;
            Ok(secret)
        }
        // Another server wrote it since we looked.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            read(path)?.ok_or_else(|| DevSecretError::Vanished(path.to_owned()))
        }
        Err(error) => Err(write_error(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The file made and reused by `--dev` servers and `token` is tests/cli.rs's; here, what
    // both sides now share: an empty file is refused, naming it, and left as it is.
    #[test]
    fn an_empty_file_is_refused_naming_it_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev-jwt-secret");
        std::fs::write(&path, " \n").unwrap();
        let refusals = [read(&path).unwrap_err(), read_or_create(&path).unwrap_err()];
        let left = std::fs::read_to_string(&path).unwrap();
        for error in refusals {
            assert!(matches!(error, DevSecretError::Empty(_)), "{error:?}");
            assert!(
                error.to_string().contains("dev-jwt-secret is empty"),
                "{error}"
            );
        }
        assert_eq!(left, " \n");
    }
}
