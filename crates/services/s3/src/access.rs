//! Per-request checks after the signature: a request must be signed, and
//! every object key it names must stay inside its bucket's directory.
//!
//! Keys reach s3s-fs only as hashed names (`keymap`), so no key can name a
//! path; the checks here are the contract's (robustness S3): `.`/`..`
//! segments and NUL are refused with 400, as are empty keys and keys over
//! 1,024 bytes. s3s has already percent-decoded the key when it reaches us,
//! so `%2e%2e/` arrives here as `../` and is refused like it.

use s3s::access::{S3Access, S3AccessContext};
use s3s::dto::{CopyObjectInput, CopySource, DeleteObjectsInput, UploadPartCopyInput};
use s3s::path::S3Path;
use s3s::{S3Request, S3Result, s3_error};

/// Why a key cannot be stored as a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty key.
    #[error("object key is empty")]
    Empty,
    /// Longer than S3's 1024 bytes.
    #[error("object key is longer than 1024 bytes")]
    TooLong,
    /// Has a `.` or `..` segment, or a NUL byte.
    #[error("object key must not contain '.' or '..' segments or NUL")]
    Traversal,
}

/// Checks `key` against S3's limits and the contract's refusals.
pub fn check_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > 1024 {
        return Err(KeyError::TooLong);
    }
    if key.contains('\0') || key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(KeyError::Traversal);
    }
    Ok(())
}

fn refuse(key: &str, err: KeyError) -> s3s::S3Error {
    tracing::debug!(?key, "refused object key: {err}");
    s3_error!(InvalidArgument, "{err}")
}

fn checked(key: &str) -> S3Result<()> {
    check_key(key).map_err(|e| refuse(key, e))
}

fn check_copy_source(source: &CopySource) -> S3Result<()> {
    match source {
        CopySource::Bucket { key, .. } => checked(key),
        // Access points do not exist locally; s3s-fs refuses them itself.
        _ => Ok(()),
    }
}

/// Requires a signature (as s3s's default) and checks every key.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyGuard;

#[async_trait::async_trait]
impl S3Access for KeyGuard {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        }
        if let S3Path::Object { key, .. } = cx.s3_path() {
            checked(key)?;
        }
        Ok(())
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        check_copy_source(&req.input.copy_source)
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        check_copy_source(&req.input.copy_source)
    }

    async fn delete_objects(&self, req: &mut S3Request<DeleteObjectsInput>) -> S3Result<()> {
        for object in &req.input.delete.objects {
            checked(&object.key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_pass() {
        for key in [
            "a",
            "dir/sub/file.txt",
            ".hidden",
            "a..b",
            "...",
            "space key",
            "ü/ñ",
            "dir/",
            "/leading",
            "a//b",
        ] {
            assert_eq!(check_key(key), Ok(()), "{key}");
        }
    }

    #[test]
    fn keys_that_would_leave_the_bucket_are_refused() {
        assert_eq!(check_key("../x"), Err(KeyError::Traversal));
        assert_eq!(check_key("a/../../x"), Err(KeyError::Traversal));
        assert_eq!(check_key(".."), Err(KeyError::Traversal));
        assert_eq!(check_key("a/./b"), Err(KeyError::Traversal));
        assert_eq!(check_key("a\0b"), Err(KeyError::Traversal));
        assert_eq!(check_key(""), Err(KeyError::Empty));
        assert_eq!(check_key(&"k".repeat(1025)), Err(KeyError::TooLong));
        assert_eq!(check_key(&"ü".repeat(512)), Ok(()), "1,024 bytes of UTF-8");
    }
}
