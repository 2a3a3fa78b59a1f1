//! Per-request checks after the signature: a request must be signed, and
//! every object key it names must stay inside its bucket's directory.
//!
//! Keys reach s3s-fs only as hashed names (`keymap`), so no key can name a
//! path; the checks here are the contract's (robustness S3): `.`/`..`
//! segments and NUL are refused with 400, as are empty keys and keys over
//! 1,024 bytes. s3s has already percent-decoded the key when it reaches us,
//! so `%2e%2e/` arrives here as `../` and is refused like it.
//!
//! With per-function credentials ([`esb_iam::Iam`]), [`KeyRing`] knows
//! the functions' secrets next to the box's, and [`KeyGuard`] checks the
//! signer's policies: the operation's action on the bucket or object
//! (`s3:GetObject` on `arn:aws:s3:::bucket/key`), each key of a
//! `DeleteObjects`, and `s3:GetObject` on a copy's source. A refusal is
//! S3's `AccessDenied` (403) with AWS's message.

use std::sync::Arc;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{Credentials, S3Auth, SecretKey};
use s3s::dto::{CopyObjectInput, CopySource, DeleteObjectsInput, UploadPartCopyInput};
use s3s::path::S3Path;
use s3s::{S3Request, S3Result, s3_error};
use subtle::ConstantTimeEq;

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

/// The box's key and secret, and the functions' (from esb-iam).
pub struct KeyRing {
    /// The box's access key id.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: SecretKey,
    /// The functions' keys.
    pub iam: Arc<esb_iam::Iam>,
}

#[async_trait::async_trait]
impl S3Auth for KeyRing {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if bool::from(access_key.as_bytes().ct_eq(self.access_key_id.as_bytes())) {
            return Ok(self.secret_access_key.clone());
        }
        match self.iam.secret_for(access_key) {
            Some(secret) => Ok(SecretKey::from(secret)),
            None => Err(s3_error!(NotSignedUp, "Your account is not signed up")),
        }
    }
}

/// The object a copy reads, if it is in a bucket (access points do not
/// exist locally; s3s-fs refuses them itself).
fn copy_source(source: &CopySource) -> Option<(&str, &str)> {
    match source {
        CopySource::Bucket { bucket, key, .. } => Some((bucket, key)),
        _ => None,
    }
}

fn check_copy_source(source: &CopySource) -> S3Result<()> {
    match copy_source(source) {
        Some((_, key)) => checked(key),
        None => Ok(()),
    }
}

/// Requires a signature (as s3s's default), checks every key, and the
/// signer's policies when `iam` is set.
#[derive(Debug, Clone, Default)]
pub struct KeyGuard {
    /// Per-function policies; `None`: every signed request is the box's.
    pub iam: Option<Arc<esb_iam::Iam>>,
}

impl KeyGuard {
    /// Checks the signer may do `action` on the bucket or object.
    fn authorize(
        &self,
        credentials: Option<&Credentials>,
        action: &str,
        bucket: &str,
        key: Option<&str>,
    ) -> S3Result<()> {
        let (Some(iam), Some(creds)) = (&self.iam, credentials) else {
            return Ok(());
        };
        if !iam.evaluates(&creds.access_key) {
            return Ok(());
        }
        let resource = esb_iam::actions::s3_arn(iam.arn_context(), bucket, key);
        iam.check(&creds.access_key, action, &resource)
            .map_err(denied)
    }

    fn copy(&self, credentials: Option<&Credentials>, source: &CopySource) -> S3Result<()> {
        check_copy_source(source)?;
        match copy_source(source) {
            Some((bucket, key)) => self.authorize(credentials, "s3:GetObject", bucket, Some(key)),
            None => Ok(()),
        }
    }
}

/// S3's `AccessDenied` with AWS's message.
fn denied(d: esb_iam::Denied) -> s3s::S3Error {
    s3_error!(AccessDenied, "{}", d.message)
}

#[async_trait::async_trait]
impl S3Access for KeyGuard {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        let (bucket, key) = match cx.s3_path() {
            S3Path::Object { bucket, key } => {
                checked(key)?;
                (Some(&**bucket), Some(&**key))
            }
            S3Path::Bucket { bucket } => (Some(&**bucket), None),
            S3Path::Root => (None, None),
        };
        let Some(iam) = &self.iam else {
            return Ok(());
        };
        if !iam.evaluates(&creds.access_key) {
            return Ok(());
        }
        match esb_iam::actions::s3(iam.arn_context(), cx.s3_op().name(), bucket, key) {
            Some(need) => iam
                .check(&creds.access_key, &need.action, &need.resource)
                .map_err(denied),
            None => Ok(()),
        }
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        self.copy(req.credentials.as_ref(), &req.input.copy_source)
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        self.copy(req.credentials.as_ref(), &req.input.copy_source)
    }

    async fn delete_objects(&self, req: &mut S3Request<DeleteObjectsInput>) -> S3Result<()> {
        for object in &req.input.delete.objects {
            checked(&object.key)?;
            self.authorize(
                req.credentials.as_ref(),
                "s3:DeleteObject",
                &req.input.bucket,
                Some(&object.key),
            )?;
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
