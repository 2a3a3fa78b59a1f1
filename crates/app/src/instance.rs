//! The record a running `esb up` keeps in its data directory
//! (`instance.json`, 0600) so `esb ps`, `esb invoke` and `esb down` find it,
//! and the lock (`esb.lock`) that lets only one `esb up` own a data
//! directory at a time.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{AppError, Context};

/// File name of the instance record.
pub const INSTANCE_FILE: &str = "instance.json";
/// File name of the lock held while `esb up` runs.
pub const LOCK_FILE: &str = "esb.lock";
/// File name of a detached `esb up`'s output.
pub const LOG_FILE: &str = "esb.log";

/// What a running `esb up` records about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// Process id of `esb up`.
    pub pid: u32,
    /// Base URL of the gateway (`https://127.0.0.1:8443`).
    pub url: String,
    /// Certificate to trust for it (HTTPS).
    pub ca_cert: Option<PathBuf>,
    /// S3 endpoint (embedded or external), if any.
    #[serde(default)]
    pub s3_url: Option<String>,
    /// DynamoDB endpoint (embedded or external), if any.
    #[serde(default)]
    pub dynamodb_url: Option<String>,
}

impl Instance {
    /// Reads the record of a running `esb up`; an error when there is none
    /// or its process is gone.
    pub fn read(data_dir: &Path) -> Result<Self, AppError> {
        let path = data_dir.join(INSTANCE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            AppError::Refused(format!(
                "no running esb up found ({} is missing; start one with `esb up --data-dir {}`)",
                path.display(),
                data_dir.display()
            ))
        })?;
        let instance: Instance = serde_json::from_str(&text)
            .context(|| format!("{} is not a valid instance file", path.display()))?;
        if !Path::new(&format!("/proc/{}", instance.pid)).exists() {
            return Err(AppError::Refused(format!(
                "esb up (pid {}) recorded in {} is no longer running",
                instance.pid,
                path.display()
            )));
        }
        Ok(instance)
    }

    /// Writes the record (atomically, 0600).
    pub fn write(&self, data_dir: &Path) -> Result<(), AppError> {
        let bytes =
            serde_json::to_vec_pretty(self).context(|| "cannot encode the instance".into())?;
        crate::files::write_private(&data_dir.join(INSTANCE_FILE), &bytes)
    }

    /// Removes the record (at shutdown, by its owner).
    pub fn remove(data_dir: &Path) {
        let _ = std::fs::remove_file(data_dir.join(INSTANCE_FILE));
    }
}

/// Ownership of a data directory by one `esb up`: an exclusive lock on
/// `esb.lock`, released when dropped (or when the process dies, `kill -9`
/// included, since the kernel drops the lock with the file descriptor).
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// Takes the lock, or says which `esb up` holds it. `data_dir` must
    /// exist.
    pub fn acquire(data_dir: &Path) -> Result<Self, AppError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(AppError::AlreadyRunning {
                pid: Instance::read(data_dir).ok().map(|i| i.pid),
                data_dir: data_dir.to_path_buf(),
            }),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).context(|| format!("cannot lock {}", path.display()))
            }
        }
    }

    /// Whether an `esb up` holds the lock of `data_dir` now (a missing
    /// directory has none).
    pub fn is_held(data_dir: &Path) -> Result<bool, AppError> {
        if !data_dir.join(LOCK_FILE).exists() {
            return Ok(false);
        }
        match Self::acquire(data_dir) {
            Ok(_lock) => Ok(false),
            Err(AppError::AlreadyRunning { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("esb-lock-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!DataDirLock::is_held(&dir).unwrap());
        let first = DataDirLock::acquire(&dir).unwrap();
        assert!(matches!(
            DataDirLock::acquire(&dir),
            Err(AppError::AlreadyRunning { .. })
        ));
        assert!(DataDirLock::is_held(&dir).unwrap());
        drop(first);
        assert!(!DataDirLock::is_held(&dir).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
