//! The built-in user pool: users with Argon2id password hashes in
//! `<data_dir>/users.json` (0600), managed by `esb user add/remove/list`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use serde::{Deserialize, Serialize};

use crate::secrets::{SecretsError, write_private};

/// File name of the user pool under the data directory.
pub const USERS_FILE: &str = "users.json";

/// Errors of the user pool.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Reading or writing failed.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The user already exists (`add`).
    #[error("user {0} already exists")]
    Exists(String),
    /// No such user (`remove`).
    #[error("no user {0}")]
    NotFound(String),
    /// User names: 1–128 characters, no control characters or spaces.
    #[error("invalid user name")]
    InvalidName,
    /// Passwords: 8–1024 bytes, and not a placeholder.
    #[error("password must be 8 to 1024 bytes and not a shipped default")]
    WeakPassword,
    /// Hashing failed.
    #[error("password hashing failed")]
    Hash,
}

/// One user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// `USERNAME` at login, `cognito:username` in tokens.
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// `cognito:groups`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Stable subject id (`sub`).
    pub sub: String,
    /// Token generation: bumped when the password changes. Tokens carry the
    /// generation they were issued at (`esb:gen`) and are refused once it
    /// differs, so a password change revokes every refresh token.
    #[serde(default)]
    pub generation: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<User>,
}

/// The pool as loaded from disk.
#[derive(Debug, Clone, Default)]
pub struct UserStore {
    path: PathBuf,
    users: Vec<User>,
}

fn valid_password(password: &str) -> bool {
    password.len() >= 8
        && password.len() <= 1024
        && !["onpremise-pass", "changeme", "password"].contains(&password)
}

fn hash(password: &str) -> Result<String, UserError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| UserError::Hash)
}

/// A hash to verify against when the user does not exist, so unknown users
/// cost the same time as wrong passwords (robustness A9).
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash("esb-dummy-password-for-timing").unwrap_or_default())
}

impl UserStore {
    /// Loads `<data_dir>/users.json` (an empty pool when absent).
    pub fn load(data_dir: &Path) -> Result<Self, UserError> {
        let path = data_dir.join(USERS_FILE);
        let users = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<UsersFile>(&bytes)
                    .map_err(|_| SecretsError::Corrupt { path: path.clone() })?
                    .users
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(SecretsError::Io {
                    path: path.clone(),
                    source: e,
                }
                .into());
            }
        };
        Ok(Self { path, users })
    }

    /// All users.
    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// Adds a user and saves the file.
    pub fn add(
        &mut self,
        username: &str,
        password: &str,
        groups: &[String],
    ) -> Result<(), UserError> {
        let valid = !username.is_empty()
            && username.chars().count() <= 128
            && !username
                .chars()
                .any(|c| c.is_control() || c.is_whitespace());
        if !valid {
            return Err(UserError::InvalidName);
        }
        if !valid_password(password) {
            return Err(UserError::WeakPassword);
        }
        if self.users.iter().any(|u| u.username == username) {
            return Err(UserError::Exists(username.to_string()));
        }
        self.users.push(User {
            username: username.to_string(),
            password_hash: hash(password)?,
            groups: groups.to_vec(),
            sub: uuid::Uuid::new_v4().to_string(),
            generation: 0,
        });
        self.save()
    }

    /// Sets a new password and bumps the user's token generation, so every
    /// token issued before (refresh tokens included) stops working.
    pub fn set_password(&mut self, username: &str, password: &str) -> Result<(), UserError> {
        if !valid_password(password) {
            return Err(UserError::WeakPassword);
        }
        let new_hash = hash(password)?;
        let user = self
            .users
            .iter_mut()
            .find(|u| u.username == username)
            .ok_or_else(|| UserError::NotFound(username.to_string()))?;
        user.password_hash = new_hash;
        user.generation = user.generation.wrapping_add(1);
        self.save()
    }

    /// Removes a user and saves the file.
    pub fn remove(&mut self, username: &str) -> Result<(), UserError> {
        let before = self.users.len();
        self.users.retain(|u| u.username != username);
        if self.users.len() == before {
            return Err(UserError::NotFound(username.to_string()));
        }
        self.save()
    }

    fn save(&self) -> Result<(), UserError> {
        let file = UsersFile {
            users: self.users.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|_| UserError::Hash)?;
        write_private(&self.path, &json)?;
        Ok(())
    }

    /// The user if `password` is right. Takes the same time whether or not
    /// the user exists. Blocking (Argon2): call it off the async threads.
    pub fn authenticate(&self, username: &str, password: &str) -> Option<&User> {
        let user = self.users.iter().find(|u| u.username == username);
        if verify_password(user.map(|u| u.password_hash.as_str()), password) {
            user
        } else {
            None
        }
    }

    /// A user by name (refresh flow).
    pub fn get(&self, username: &str) -> Option<&User> {
        self.users.iter().find(|u| u.username == username)
    }
}

/// Argon2id verification of `password` against `stored`, or against a
/// dummy hash when there is no user (same cost either way, robustness A9).
/// CPU-bound for tens of milliseconds: never call it on an async thread.
pub fn verify_password(stored: Option<&str>, password: &str) -> bool {
    let stored = stored.unwrap_or_else(|| dummy_hash());
    let ok = password.len() <= 1024
        && Argon2::default()
            .verify_password(password.as_bytes(), stored)
            .is_ok();
    ok && stored != dummy_hash()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn add_authenticate_remove_persisted_0600() {
        let dir = std::env::temp_dir().join(format!("esb-users-{}", uuid::Uuid::new_v4()));
        let mut store = UserStore::load(&dir).unwrap();
        store
            .add("alice", "correct horse battery", &["admin".into()])
            .unwrap();
        assert!(matches!(
            store.add("alice", "another password", &[]),
            Err(UserError::Exists(_))
        ));
        assert!(matches!(
            store.add("bob", "short", &[]),
            Err(UserError::WeakPassword)
        ));
        assert!(matches!(
            store.add("b o b", "long enough pw", &[]),
            Err(UserError::InvalidName)
        ));

        let store = UserStore::load(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(USERS_FILE)).unwrap();
        assert!(text.contains("$argon2id$") && !text.contains("correct horse"));
        let mode = std::fs::metadata(dir.join(USERS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            store
                .authenticate("alice", "correct horse battery")
                .unwrap()
                .groups,
            ["admin"]
        );
        assert!(store.authenticate("alice", "wrong").is_none());
        assert!(
            store
                .authenticate("nobody", "correct horse battery")
                .is_none()
        );

        let mut store = store;
        assert_eq!(store.get("alice").unwrap().generation, 0);
        assert!(matches!(
            store.set_password("alice", "short"),
            Err(UserError::WeakPassword)
        ));
        store.set_password("alice", "a brand new password").unwrap();
        let reloaded = UserStore::load(&dir).unwrap();
        assert_eq!(reloaded.get("alice").unwrap().generation, 1);
        assert!(
            reloaded
                .authenticate("alice", "correct horse battery")
                .is_none()
        );
        assert!(
            reloaded
                .authenticate("alice", "a brand new password")
                .is_some()
        );
        store.remove("alice").unwrap();
        assert!(matches!(store.remove("alice"), Err(UserError::NotFound(_))));
        assert!(UserStore::load(&dir).unwrap().users().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
