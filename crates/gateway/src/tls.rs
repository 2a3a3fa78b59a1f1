//! TLS for the gateway listener: rustls with the aws-lc-rs provider, and a
//! self-signed development certificate generated on first start.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a certificate or key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("generating the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server certificate and key, ready to accept TLS connections.
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<rustls::ServerConfig>,
    cert_pem: String,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

/// Makes aws-lc-rs the process-wide rustls provider (harmless when one is
/// already installed). `TlsConfig` does not need it; clients built with the
/// process default (reqwest) do.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Names the self-signed certificate is valid for.
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

impl TlsConfig {
    /// Uses `dir/cert.pem` and `dir/key.pem`, generating a self-signed pair
    /// for localhost, 127.0.0.1 and ::1 when they do not exist yet (the key
    /// is written with mode 0600).
    pub fn self_signed(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        if !(cert_path.exists() && key_path.exists()) {
            std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
            let generated = rcgen::generate_simple_self_signed(names)?;
            write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, generated.cert.pem()).map_err(|source| TlsError::Io {
                path: cert_path.clone(),
                source,
            })?;
            tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
        }
        Self::from_pem_files(&cert_path, &key_path)
    }

    /// Uses a certificate chain and private key from PEM files.
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_pem = std::fs::read_to_string(cert_path).map_err(|source| TlsError::Io {
            path: cert_path.to_path_buf(),
            source,
        })?;
        let key_pem = std::fs::read(key_path).map_err(|source| TlsError::Io {
            path: key_path.to_path_buf(),
            source,
        })?;
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                path: cert_path.to_path_buf(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: cert_path.to_path_buf(),
                message: "no certificate found".to_string(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: key_path.to_path_buf(),
            message: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            cert_pem,
        })
    }

    /// The certificate chain in PEM (clients add it as a trusted root).
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The rustls server configuration.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.config))
    }
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_with_private_key() {
        let dir = std::env::temp_dir().join(format!("esb-tls-{}", uuid::Uuid::new_v4()));
        let first = TlsConfig::self_signed(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = TlsConfig::self_signed(&dir).unwrap();
        assert_eq!(first.certificate_pem(), second.certificate_pem());
        assert!(
            first
                .certificate_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(
            first.server_config().alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_files_are_reported_with_their_path() {
        let err = TlsConfig::from_pem_files(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }
}
