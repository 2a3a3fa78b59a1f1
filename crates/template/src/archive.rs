//! Unpacking a function's local `.zip` code (`Function::code_is_zip`) once
//! into the data directory, keyed by the zip's content hash. This is the
//! only place the crate writes; the app calls it when it prepares
//! functions. Extraction goes through the maintained `zip` crate, whose
//! `extract` refuses entries that would land outside the target directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Unpacked code larger than this (declared sizes) is refused: Lambda's
/// own limit for unzipped code and layers is 250 MB.
const MAX_UNPACKED: u64 = 512 * 1024 * 1024;

/// Marker written last, so a half-finished unpack is never reused.
const DONE: &str = ".esb-unpacked";

/// Why a zip could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading the zip or writing the files failed.
    #[error("cannot unpack {zip}: {source}")]
    Io {
        /// The zip file.
        zip: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a readable zip archive.
    #[error("cannot unpack {zip}: {source}")]
    Zip {
        /// The zip file.
        zip: PathBuf,
        /// The cause.
        source: zip::result::ZipError,
    },
    /// The archive says it unpacks to more than the limit.
    #[error("cannot unpack {zip}: it unpacks to {size} bytes, more than {MAX_UNPACKED}")]
    TooLarge {
        /// The zip file.
        zip: PathBuf,
        /// Declared unpacked size.
        size: u64,
    },
}

/// Unpacks `zip` into `<data_dir>/code/<sha256 of the zip, 16 hex>` unless
/// that directory already holds a finished unpack, and returns it.
pub fn unpack_zip(zip: &Path, data_dir: &Path) -> Result<PathBuf, UnpackError> {
    let io = |source| UnpackError::Io {
        zip: zip.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(zip).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hex::encode(hasher.finalize());
    let target = data_dir.join("code").join(&digest[..16]);
    if target.join(DONE).is_file() {
        return Ok(target);
    }
    let file = std::fs::File::open(zip).map_err(io)?;
    let mut archive = zip::ZipArchive::new(file).map_err(|source| UnpackError::Zip {
        zip: zip.to_path_buf(),
        source,
    })?;
    let size: u64 = (0..archive.len())
        .filter_map(|i| archive.by_index_raw(i).ok().map(|f| f.size()))
        .sum();
    if size > MAX_UNPACKED {
        return Err(UnpackError::TooLarge {
            zip: zip.to_path_buf(),
            size,
        });
    }
    let tmp = data_dir
        .join("code")
        .join(format!("{}.tmp-{}", &digest[..16], std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io)?;
    archive.extract(&tmp).map_err(|source| UnpackError::Zip {
        zip: zip.to_path_buf(),
        source,
    })?;
    std::fs::write(tmp.join(DONE), &digest).map_err(io)?;
    if std::fs::rename(&tmp, &target).is_err() {
        // Another process finished first, or a stale unfinished copy is in
        // the way: keep a finished one, else replace it.
        if target.join(DONE).is_file() {
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            let _ = std::fs::remove_dir_all(&target);
            std::fs::rename(&tmp, &target).map_err(io)?;
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    fn make_zip(path: &Path, entries: &[(&str, &str)]) {
        let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for (name, body) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(body.as_bytes()).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn unpacks_once_keyed_by_content() {
        let dir = std::env::temp_dir().join(format!("esb-unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let z = dir.join("code.zip");
        make_zip(&z, &[("app.py", "print(1)"), ("pkg/mod.py", "x = 1")]);
        let data = dir.join("data");
        let out = unpack_zip(&z, &data).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("app.py")).unwrap(),
            "print(1)"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("pkg/mod.py")).unwrap(),
            "x = 1"
        );
        // Same content: same directory, not unpacked again.
        std::fs::write(out.join("app.py"), "changed").unwrap();
        assert_eq!(unpack_zip(&z, &data).unwrap(), out);
        assert_eq!(
            std::fs::read_to_string(out.join("app.py")).unwrap(),
            "changed"
        );
        // New content: a new directory.
        make_zip(&z, &[("app.py", "print(2)")]);
        let again = unpack_zip(&z, &data).unwrap();
        assert_ne!(again, out);
        assert_eq!(
            std::fs::read_to_string(again.join("app.py")).unwrap(),
            "print(2)"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn entries_outside_the_target_are_refused_or_contained() {
        let dir = std::env::temp_dir().join(format!("esb-unpack-evil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let z = dir.join("evil.zip");
        make_zip(&z, &[("../../escaped.txt", "boom")]);
        let _ = unpack_zip(&z, &dir.join("data"));
        assert!(!dir.join("escaped.txt").exists());
        assert!(!dir.join("data/escaped.txt").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_is_not_a_zip_is_an_error() {
        let dir = std::env::temp_dir().join(format!("esb-unpack-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let z = dir.join("bad.zip");
        std::fs::write(&z, "not a zip").unwrap();
        let err = unpack_zip(&z, &dir.join("data")).unwrap_err();
        assert!(err.to_string().starts_with("cannot unpack"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
