//! The box's auth state (API key, JWT signing key, user pool) in the data
//! directory, opened with the box's credentials (and the functions', whose keys sign
//! Invoke API calls too).

use std::path::Path;
use std::sync::Arc;

use esb_config::Settings;

use crate::error::{AppError, Context};
use crate::services::BoxCredentials;

/// Opens the auth state. `dev` accepts unsigned Invoke API calls from
/// loopback.
pub fn open_auth(
    settings: &Settings,
    data_dir: &Path,
    dev: bool,
    creds: &BoxCredentials,
    iam: Option<Arc<esb_iam::Iam>>,
) -> Result<Arc<esb_auth::Auth>, AppError> {
    let mut config = esb_auth::AuthConfig::new(data_dir);
    config.dev = dev;
    config.api_keys = settings.api_keys.clone();
    config.issuer = settings.jwt_issuer.clone();
    config.aws_credentials = Some((creds.access_key_id.clone(), creds.secret_access_key.clone()));
    config.iam = iam;
    let auth = esb_auth::Auth::open(&config).context(|| "cannot set up authentication".into())?;
    Ok(Arc::new(auth))
}
