//! Files ESB writes: the data directory is created 0700 and its files
//! 0600; every file is replaced atomically (temporary file, sync, rename)
//! so a reader never sees half a file. The one atomic writer for the CLI
//! and the app.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{AppError, Context};

/// Creates `dir` (and missing parents) with mode 0700 and returns its
/// canonical path. An existing directory keeps its mode (it may be the
/// user's own, such as `--data-dir .`).
pub fn create_private_dir(dir: &Path) -> Result<PathBuf, AppError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .context(|| format!("cannot create data directory {}", dir.display()))?;
    std::fs::canonicalize(dir).context(|| format!("cannot resolve {}", dir.display()))
}

/// A file written next to its target under a temporary name, synced to
/// disk, and not yet visible: [`Staged::commit`] renames it into place,
/// dropping it uncommitted removes it. Several staged files committed
/// together give all-or-nothing output (`esb generate`).
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staged {
    /// Writes `bytes` to a temporary file beside `path` with `mode`.
    pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<Self, AppError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staged = Self {
            temp: path.with_file_name(format!(".{name}.tmp-{}", std::process::id())),
            target: path.to_path_buf(),
            committed: false,
        };
        (|| -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&staged.temp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })()
        .context(|| format!("cannot write {}", staged.temp.display()))?;
        Ok(staged)
    }

    /// Renames the file into place; returns the target.
    pub fn commit(mut self) -> Result<PathBuf, AppError> {
        std::fs::rename(&self.temp, &self.target).context(|| {
            format!(
                "cannot move {} to {}",
                self.temp.display(),
                self.target.display()
            )
        })?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` atomically with mode 0600 (state files in the
/// data directory).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AppError> {
    Staged::write(path, bytes, 0o600)?.commit().map(drop)
}

/// Opens (creating with mode 0600) `path` for a log: appended to, never
/// truncated, so a failed second start cannot erase a running one's log.
pub fn open_private_log(path: &Path) -> Result<std::fs::File, AppError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn data_dir_is_0700_and_files_0600() {
        let root = std::env::temp_dir().join(format!("esb-files-{}", uuid::Uuid::new_v4()));
        let dir = create_private_dir(&root.join("data")).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("instance.json");
        write_private(&file, b"{}").unwrap();
        assert_eq!(mode(&file), 0o600);
        write_private(&file, b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"{\"a\":1}");
        let log = dir.join("esb.log");
        open_private_log(&log).unwrap().write_all(b"one\n").unwrap();
        open_private_log(&log).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(mode(&log), 0o600);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
