//! The box's generated secrets: AWS-style credentials (the Invoke API, and
//! what workers sign with) and the default API key, kept in
//! `<data_dir>/credentials.json` with mode 0600.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};

/// File name of the credentials under the data directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";

/// Errors reading or creating secrets.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A secrets file cannot be parsed.
    #[error("{} is corrupt; remove it to generate new secrets", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
    },
    /// The system random generator or key generation failed.
    #[error("cryptographic operation failed")]
    Crypto,
    /// A configured secret is a well-known placeholder or too short.
    #[error(
        "{name} holds a placeholder or too-short value; set a real secret (at least 16 characters) or remove it so ESB generates one"
    )]
    Placeholder {
        /// Which setting.
        name: String,
    },
}

/// The box's credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Access key id (`AKIA` + 16 upper-case characters, like AWS).
    pub aws_access_key_id: String,
    /// Secret access key (40 characters).
    pub aws_secret_access_key: String,
    /// The generated API key (`x-api-key`).
    pub api_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("aws_access_key_id", &self.aws_access_key_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Fresh random credentials.
    pub fn generate() -> Result<Self, SecretsError> {
        Ok(Self {
            aws_access_key_id: format!(
                "AKIA{}",
                random_string(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")?
            ),
            aws_secret_access_key: random_string(
                40,
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            )?,
            api_key: random_string(
                40,
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            )?,
        })
    }

    /// Reads `<data_dir>/credentials.json`, or generates and writes it
    /// (0600). Returns whether it was generated (print it once then).
    pub fn load_or_generate(data_dir: &Path) -> Result<(Self, bool), SecretsError> {
        let path = data_dir.join(CREDENTIALS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let creds: Credentials = serde_json::from_slice(&bytes)
                    .map_err(|_| SecretsError::Corrupt { path: path.clone() })?;
                Ok((creds, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let creds = Self::generate()?;
                let json = serde_json::to_vec_pretty(&creds).map_err(|_| SecretsError::Crypto)?;
                write_private(&path, &json)?;
                Ok((creds, true))
            }
            Err(e) => Err(SecretsError::Io { path, source: e }),
        }
    }
}

/// `len` characters drawn uniformly from `alphabet` (rejection sampling, so
/// no modulo bias).
pub fn random_string(len: usize, alphabet: &[u8]) -> Result<String, SecretsError> {
    let rng = SystemRandom::new();
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill(&mut buf).map_err(|_| SecretsError::Crypto)?;
        for b in buf {
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
            }
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` created with mode 0600 (through a temporary
/// file and a rename, so a crash never leaves half a secret).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretsError> {
    let io = |source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700. An existing
/// directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Tightens files and the data directory left by older versions: secret
/// files to 0600 and `dir` itself to 0700 when they are more open. Missing
/// files are skipped; failures are logged (by name only), not fatal.
pub fn tighten_permissions(dir: &Path, files: &[&str]) {
    use std::os::unix::fs::PermissionsExt as _;
    let fix = |path: &Path, want: u32| {
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && !meta.file_type().is_symlink()
            && meta.permissions().mode() & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))
        {
            tracing::warn!("cannot restrict permissions of {}: {e}", path.display());
        }
    };
    fix(dir, 0o700);
    for f in files {
        fix(&dir.join(f), 0o600);
    }
}

/// Values shipped in examples and the original system's docs; a setting
/// holding one of them (or containing `changeme`, `change-in-production`)
/// is refused (robustness K1).
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "change-in-production",
    "dev-api-key",
    "onpremise-pass",
    "onpremise-user",
    "placeholder",
    "your-api-key",
    "password",
    "secret",
    "example",
    "xxxxxxxx",
];

/// Fails when `value` looks like a placeholder or is shorter than 16
/// characters. `name` names the setting in the message (never the value).
pub fn check_not_placeholder(name: &str, value: &str) -> Result<(), SecretsError> {
    let lower = value.to_ascii_lowercase();
    if value.trim().len() < 16 || PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return Err(SecretsError::Placeholder {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Constant-time string equality (robustness A7). Lengths leak, contents
/// do not.
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn generated_once_then_reused_with_0600() {
        let dir = std::env::temp_dir().join(format!("esb-creds-{}", uuid::Uuid::new_v4()));
        let (a, first) = Credentials::load_or_generate(&dir).unwrap();
        let (b, second) = Credentials::load_or_generate(&dir).unwrap();
        assert!(first && !second);
        assert_eq!(a, b);
        assert!(a.aws_access_key_id.starts_with("AKIA") && a.aws_access_key_id.len() == 20);
        assert_eq!(a.aws_secret_access_key.len(), 40);
        let mode = std::fs::metadata(dir.join(CREDENTIALS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700, "the data dir is created 0700");
        // Debug never shows the secrets.
        let shown = format!("{a:?}");
        assert!(!shown.contains(&a.aws_secret_access_key) && !shown.contains(&a.api_key));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn old_world_readable_files_are_tightened() {
        let dir = std::env::temp_dir().join(format!("esb-perm-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = dir.join(CREDENTIALS_FILE);
        std::fs::write(&f, b"{}").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        tighten_permissions(&dir, &[CREDENTIALS_FILE, "absent.json"]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(&dir), 0o700);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn k1_placeholders_refused() {
        for bad in [
            "dev-api-key-change-in-production",
            "changeme",
            "short",
            "my-secret-value-1234",
            "onpremise-pass",
        ] {
            let err = check_not_placeholder("api key", bad).unwrap_err();
            assert!(!err.to_string().contains(bad) || bad == "short");
        }
        check_not_placeholder("api key", "q8Vn3kLr0pXa7TbZ2mWc").unwrap();
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
    }
}
