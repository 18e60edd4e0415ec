//! Secrets pgchat generates for itself and keeps in the data directory: the development
//! JWT secret (`<data_dir>/jwt_secret`) and the private cluster's password
//! (`<data_dir>/postgres_password`).
//!
//! Each is 32 random bytes written as 64 hex characters, in a file of mode 0600 that is
//! created once and read by every later start and by every process of a deployment
//! (the supervisor, its workers, `pgchat token`, `pgchat bench`). Two processes that start
//! at once agree on one value: each writes its candidate to a private temporary file and
//! hard-links it into place, which fails when the name exists; the loser reads the winner's.
//! A reader therefore never sees a half-written file.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::foundation::config::Config;

/// Bytes of randomness in a generated secret (written as twice as many hex characters).
pub(crate) const GENERATED_BYTES: usize = 32;

/// A secret file that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub(crate) struct SecretError {
    pub(crate) path: String,
    pub(crate) problem: String,
}

impl SecretError {
    fn new(path: &Path, problem: impl Into<String>) -> Self {
        SecretError {
            path: path.display().to_string(),
            problem: problem.into(),
        }
    }
}

/// A secret and whether this call created it.
pub(crate) struct Loaded {
    pub(crate) value: String,
    pub(crate) created: bool,
}

/// Reads the secret at `path`, or generates it (creating its directory) if there is none.
pub(crate) fn load_or_create(path: &Path) -> Result<Loaded, SecretError> {
    match read(path) {
        Ok(value) => {
            return Ok(Loaded {
                value,
                created: false,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SecretError::new(path, e.to_string())),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| SecretError::new(dir, e.to_string()))?;
    let mut bytes = [0u8; GENERATED_BYTES];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut bytes);
    let value: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = temporary_name(path);
    let written = write_private(&tmp, &value).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(Loaded {
            value,
            created: true,
        }),
        // Another process won the race: use its secret.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let value = read(path).map_err(|e| SecretError::new(path, e.to_string()))?;
            Ok(Loaded {
                value,
                created: false,
            })
        }
        Err(e) => Err(SecretError::new(path, format!("cannot create it: {e}"))),
    }
}

pub(crate) fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(
        ".{name}.{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ))
}

pub(crate) fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(value.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// The secret in `path`, refused when others may read the file or when it is too short
/// to be one of ours (or a worthy replacement).
fn read(path: &Path) -> std::io::Result<String> {
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let text = std::fs::read_to_string(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(invalid(format!(
                "is readable by other users (mode {mode:o}): chmod 600 it, or delete it to \
                 generate a new one"
            )));
        }
    }
    let value = text.trim().to_string();
    if value.len() < GENERATED_BYTES {
        return Err(invalid(format!(
            "holds {} bytes, fewer than {GENERATED_BYTES}: delete it to generate a new one",
            value.len()
        )));
    }
    Ok(value)
}

/// Where the generated development JWT secret is kept.
pub(crate) fn jwt_secret_path(config: &Config) -> PathBuf {
    config.data_dir.join("jwt_secret")
}

/// The HS256 secret in force: `JWT_SECRET` when set, else (outside production, which
/// refuses to start without it) the generated one in the data directory. The first
/// process to generate it says so once on stderr, naming the file but not the secret,
/// since logs travel further than a 0600 file.
pub(crate) fn jwt_secret(config: &Config) -> Result<String, SecretError> {
    if let Some(secret) = &config.jwt_secret {
        return Ok(secret.expose().to_string());
    }
    let path = jwt_secret_path(config);
    if config.is_production() {
        // validate() refuses this first; kept so that no path signs with a file in production.
        return Err(SecretError::new(
            &path,
            "NODE_ENV=production requires JWT_SECRET; a generated secret is for development",
        ));
    }
    let loaded = load_or_create(&path)?;
    if loaded.created {
        eprintln!(
            "pgchat: JWT_SECRET is unset: generated a random development secret in {} \
             (mode 0600). Sign your backend's tokens with it, or set JWT_SECRET.",
            path.display()
        );
    }
    Ok(loaded.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("pgchat-secrets-{:016x}", rand::random::<u64>()))
    }

    #[test]
    fn a_secret_is_generated_once_private_and_then_reused() {
        let dir = scratch();
        let path = dir.join("nested/jwt_secret");
        let first = load_or_create(&path).unwrap();
        assert!(first.created);
        assert_eq!(first.value.len(), 2 * GENERATED_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = load_or_create(&path).unwrap();
        assert!(!again.created);
        assert_eq!(again.value, first.value);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn racing_processes_agree_on_one_secret() {
        let dir = scratch();
        let path = dir.join("jwt_secret");
        let values: Vec<Loaded> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(values.iter().filter(|l| l.created).count(), 1);
        assert!(values.iter().all(|l| l.value == values[0].value));
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch();
        let path = dir.join("jwt_secret");
        load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&path).err().unwrap();
        assert!(e.problem.contains("chmod 600"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
