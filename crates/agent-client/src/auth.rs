//! Authentication of the agent's gRPC port: one shared bearer token.
//!
//! The agent refuses every call that does not carry
//! `authorization: Bearer <token>` (`UNAUTHENTICATED`, compared in constant
//! time); the client adds it to every call. The token is 256 random bits,
//! kept in a file readable by its owner only (`0600`): `esb up` keeps its
//! local agent's in its data directory (`<data-dir>/agent.token`); a
//! standalone `esb agent` creates `--token-file` (default
//! `<cache-dir>/agent.token`) and a remote `esb up --agent URL` reads the
//! copy given by `ESB_AGENT_TOKEN_FILE`, else `<data-dir>/agent.token`.
//!
//! A shared token rather than mutual TLS: it needs no certificate
//! authority and no rotation tooling, and the port is meant for a private
//! network between the control host and its compute nodes; TLS for the
//! transport can be added on top (tonic's `tls` feature) without changing
//! this check.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Name of the token file in a data directory.
pub const TOKEN_FILE: &str = "agent.token";
/// Environment variable naming a token file (client and agent).
pub const TOKEN_FILE_ENV: &str = "ESB_AGENT_TOKEN_FILE";

/// The shared secret of an agent port.
#[derive(Clone)]
pub struct AgentToken(Arc<str>);

impl std::fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentToken(..)")
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or creating the file failed.
    #[error("agent token {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable or writable by others than its owner.
    #[error("agent token {0} is accessible by other users (chmod 600 it)")]
    Permissions(String),
    /// The file holds no usable token.
    #[error("agent token {0} is empty or too short (at least 32 characters)")]
    Invalid(String),
}

impl AgentToken {
    /// A new random token (256 bits, hex).
    pub fn generate() -> Self {
        let a = uuid::Uuid::new_v4().simple().to_string();
        let b = uuid::Uuid::new_v4().simple().to_string();
        Self(Arc::from(format!("{a}{b}")))
    }

    /// A token given as text (trimmed); `None` when too short.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        (text.len() >= 32 && text.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| Self(Arc::from(text)))
    }

    /// Reads the token in `path`, refusing a file others can access.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let shown = path.display().to_string();
        let io = |source| TokenError::Io {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(TokenError::Permissions(shown));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text).ok_or(TokenError::Invalid(shown))
    }

    /// Reads the token in `path`, or creates the file (mode `0600`) with a
    /// new one.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        if path.exists() {
            return Self::load(path);
        }
        let shown = path.display().to_string();
        let io = |source| TokenError::Io {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let token = Self::generate();
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(mut file) => {
                file.write_all(token.0.as_bytes()).map_err(io)?;
                file.write_all(b"\n").map_err(io)?;
                Ok(token)
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io(e)),
        }
    }

    /// The token's text (for handing it to a child process).
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether `presented` (an `authorization` value) carries this token.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let expected = self.header();
        expected.as_bytes().ct_eq(presented).into()
    }
}

/// Client interceptor: adds the token to every call.
#[derive(Clone, Debug, Default)]
pub struct AddToken(pub Option<AgentToken>);

impl Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value = MetadataValue::try_from(token.header())
                .map_err(|_| Status::internal("agent token is not a valid header"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// Server interceptor: refuses calls without the token.
#[derive(Clone, Debug)]
pub struct CheckToken(pub AgentToken);

impl Interceptor for CheckToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .map(MetadataValue::as_bytes)
            .unwrap_or_default();
        if self.0.accepts(presented) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("missing or wrong agent token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "esb-token-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn created_token_is_private_and_read_back() {
        let d = dir();
        let path = d.join(TOKEN_FILE);
        let token = AgentToken::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = AgentToken::load_or_create(&path).unwrap();
        assert_eq!(token.expose(), again.expose());
        assert_eq!(token.expose().len(), 64);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            AgentToken::load(&path),
            Err(TokenError::Permissions(_))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn check_refuses_missing_and_wrong_tokens() {
        let token = AgentToken::generate();
        let mut check = CheckToken(token.clone());
        assert_eq!(
            check.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut wrong = AddToken(Some(AgentToken::generate()));
        let request = wrong.call(Request::new(())).unwrap();
        assert_eq!(
            check.call(request).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut right = AddToken(Some(token));
        let request = right.call(Request::new(())).unwrap();
        assert!(check.call(request).is_ok());
        assert!(AgentToken::parse("short").is_none());
    }
}
