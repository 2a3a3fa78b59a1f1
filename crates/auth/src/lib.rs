//! ESB's authentication state and rules: the box's generated credentials
//! and API keys, the built-in user pool (Argon2id), the login endpoint's
//! logic (Cognito `InitiateAuth` shape), RS256 JWT issuing and verification
//! with a key generated on first start, the JWKS and OpenID documents,
//! Lambda authorizer result evaluation and caching, and the brute-force
//! limiter.
//!
//! Must not: speak HTTP or invoke functions (the gateway does both and
//! calls in here), fetch keys from anywhere but the data directory, or put
//! a secret into an error message, a `Debug` output or a log line.
#![forbid(unsafe_code)]

pub mod jwt;
pub mod limiter;
pub mod policy;
pub mod secrets;
pub mod users;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Instant, SystemTime};

use serde::Deserialize;
use serde_json::{Map, Value, json};

pub use jwt::{JwtError, PublicJwk, Rules, SigningKey};
pub use limiter::Limiter;
pub use policy::{Decision, DecisionCache, DenyKind};
pub use secrets::{CREDENTIALS_FILE, Credentials, SecretsError, check_not_placeholder, ct_eq};
pub use users::{USERS_FILE, User, UserError, UserStore};

/// File name of the JWT signing key (PKCS#8 DER) under the data directory.
pub const JWT_KEY_FILE: &str = "jwt-signing-key.der";
/// Default login path (the original system's).
pub const DEFAULT_LOGIN_PATH: &str = "/user/auth/ver1.0";
/// Default issuer of built-in tokens; JWT authorizers in templates served
/// by ESB name this issuer (see docs/auth.md).
pub const DEFAULT_ISSUER: &str = "https://esb.local";
/// `aud` of ID tokens when the login names no `ClientId`.
pub const DEFAULT_CLIENT_ID: &str = "esb";
/// ID and access token lifetime.
pub const TOKEN_TTL_SECS: i64 = 3600;
/// Refresh token lifetime.
pub const REFRESH_TTL_SECS: i64 = 30 * 24 * 3600;
/// Claim carrying the user's token generation (see [`User::generation`]).
pub const GENERATION_CLAIM: &str = "esb:gen";
/// `token_use` values accepted as bearer tokens (never `refresh`).
pub const BEARER_TOKEN_USES: &[&str] = &["id", "access"];

/// Errors opening the auth state.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Secrets could not be read, generated or accepted.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The user pool could not be read.
    #[error(transparent)]
    Users(#[from] UserError),
}

/// How to open the auth state.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Where secrets live (created if needed).
    pub data_dir: PathBuf,
    /// API keys from configuration; empty means the generated one.
    pub api_keys: Vec<String>,
    /// Issuer of built-in tokens.
    pub issuer: String,
    /// Development mode (unsigned loopback Invoke API calls allowed).
    pub dev: bool,
    /// Configured access key id and secret, replacing the generated pair.
    pub aws_credentials: Option<(String, String)>,
    /// The functions' credentials (esb-iam): their keys sign Invoke API
    /// calls too.
    pub iam: Option<std::sync::Arc<esb_iam::Iam>>,
}

impl AuthConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            api_keys: Vec::new(),
            issuer: DEFAULT_ISSUER.to_string(),
            dev: false,
            aws_credentials: None,
            iam: None,
        }
    }
}

/// A login endpoint answer, for the gateway to send as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: String,
    /// `Retry-After` seconds (429).
    pub retry_after: Option<u64>,
}

impl LoginResponse {
    fn error(status: u16, kind: &str, message: &str) -> Self {
        Self {
            status,
            body: json!({"__type": kind, "message": message}).to_string(),
            retry_after: None,
        }
    }
}

/// The auth state of one `esb up`. Shared behind an `Arc`.
pub struct Auth {
    credentials: Credentials,
    api_keys: Vec<String>,
    users: RwLock<UsersCache>,
    /// How often `users.json` was re-read since start (tests).
    user_reloads: std::sync::atomic::AtomicU64,
    data_dir: PathBuf,
    signer: SigningKey,
    issuer: String,
    dev: bool,
    /// Login and API-key failures per source.
    pub limiter: Limiter,
    /// Lambda authorizer decisions.
    pub cache: DecisionCache,
    generated: Vec<&'static str>,
    iam: Option<std::sync::Arc<esb_iam::Iam>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("issuer", &self.issuer)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

/// What identifies one version of `users.json` on disk: a rewrite (a
/// rename over it, as [`secrets::write_private`] does) changes the inode
/// and ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            ino: m.ino(),
            len: m.len(),
            mtime: m.modified().ok(),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The user pool in memory, reloaded only when the file changed.
struct UsersCache {
    store: UserStore,
    stamp: Option<FileStamp>,
}

/// A login half done: either answered already, or waiting for the
/// (blocking) password check, or ready to issue tokens.
enum LoginStep {
    Answer(LoginResponse),
    Password {
        client_id: String,
        user: Option<User>,
        password: String,
    },
    Issue {
        client_id: String,
        user: User,
    },
}

/// Runs blocking `f` on this thread, telling a multi-threaded tokio
/// runtime first so it moves its other tasks away (the sync
/// [`Auth::login`] path; [`Auth::login_async`] uses `spawn_blocking`).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[derive(Deserialize)]
struct LoginRequest {
    #[serde(rename = "AuthFlow", default)]
    auth_flow: Option<String>,
    #[serde(rename = "ClientId", default)]
    client_id: Option<String>,
    #[serde(rename = "AuthParameters")]
    auth_parameters: Map<String, Value>,
}

impl Auth {
    /// Loads or generates the secrets in `config.data_dir` and checks the
    /// configured ones are no placeholders.
    pub fn open(config: &AuthConfig) -> Result<Self, AuthError> {
        for (i, key) in config.api_keys.iter().enumerate() {
            check_not_placeholder(&format!("api key #{}", i + 1), key)?;
        }
        let (mut credentials, creds_generated) = Credentials::load_or_generate(&config.data_dir)?;
        if let Some((akid, secret)) = &config.aws_credentials {
            check_not_placeholder("secret access key", secret)?;
            credentials.aws_access_key_id = akid.clone();
            credentials.aws_secret_access_key = secret.clone();
        }
        let (signer, key_generated) =
            SigningKey::load_or_generate(&config.data_dir.join(JWT_KEY_FILE))?;
        let stamp = FileStamp::of(&config.data_dir.join(USERS_FILE));
        let users = UserStore::load(&config.data_dir)?;
        secrets::tighten_permissions(
            &config.data_dir,
            &[CREDENTIALS_FILE, JWT_KEY_FILE, USERS_FILE],
        );
        let mut generated = Vec::new();
        if creds_generated {
            generated.push("credentials");
        }
        if key_generated {
            generated.push("jwt signing key");
        }
        let api_keys = if config.api_keys.is_empty() {
            vec![credentials.api_key.clone()]
        } else {
            config.api_keys.clone()
        };
        Ok(Self {
            credentials,
            api_keys,
            users: RwLock::new(UsersCache {
                store: users,
                stamp,
            }),
            user_reloads: std::sync::atomic::AtomicU64::new(0),
            data_dir: config.data_dir.clone(),
            signer,
            issuer: config.issuer.clone(),
            dev: config.dev,
            limiter: Limiter::default(),
            cache: DecisionCache::default(),
            generated,
            iam: config.iam.clone(),
        })
    }

    /// The box's credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Which secrets this start generated (print them once).
    pub fn generated(&self) -> &[&'static str] {
        &self.generated
    }

    /// Development mode.
    pub fn dev(&self) -> bool {
        self.dev
    }

    /// The issuer of built-in tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Where the secrets live.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Secret for a SigV4 access key id: the box's own, else a function's.
    pub fn lookup_secret(&self, access_key_id: &str) -> Option<String> {
        if ct_eq(access_key_id, &self.credentials.aws_access_key_id) {
            return Some(self.credentials.aws_secret_access_key.clone());
        }
        self.iam.as_ref()?.secret_for(access_key_id)
    }

    /// The functions' credentials and policies, when set.
    pub fn iam(&self) -> Option<&std::sync::Arc<esb_iam::Iam>> {
        self.iam.as_ref()
    }

    /// Whether `presented` is a valid API key (constant time per key).
    pub fn check_api_key(&self, presented: Option<&str>) -> bool {
        let Some(presented) = presented else {
            return false;
        };
        // Compare against every key so timing does not tell which matched.
        self.api_keys
            .iter()
            .fold(false, |ok, k| ct_eq(presented, k) | ok)
    }

    /// The JWKS document.
    pub fn jwks_json(&self) -> String {
        json!({"keys": [self.signer.public().to_json()]}).to_string()
    }

    /// The OpenID configuration; `base` is the URL the gateway is reached at.
    pub fn openid_configuration(&self, base: &str) -> String {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["none"],
        })
        .to_string()
    }

    /// Verifies a bearer token signed by the built-in key: `rules`, plus
    /// `token_use` must be `id` or `access` (a refresh token is never a
    /// bearer token, whatever `rules` says), and a token issued to a user
    /// must still match that user (not removed, password not changed).
    pub fn verify_token(
        &self,
        token: &str,
        rules: &Rules<'_>,
        now_unix: i64,
    ) -> Result<Map<String, Value>, JwtError> {
        let claims = jwt::verify(
            jwt::strip_bearer(token),
            std::slice::from_ref(self.signer.public()),
            rules,
            now_unix,
        )?;
        let token_use = claims.get("token_use").and_then(Value::as_str);
        if !token_use.is_some_and(|u| BEARER_TOKEN_USES.contains(&u)) {
            return Err(JwtError::TokenUse);
        }
        self.check_not_revoked(&claims)?;
        Ok(claims)
    }

    /// A token naming a user (`cognito:username` or `username`, as login
    /// issues them) is valid only while that user exists with the same
    /// `sub` and token generation. Tokens naming no user (signed by tooling
    /// through [`Auth::sign`]) pass.
    fn check_not_revoked(&self, claims: &Map<String, Value>) -> Result<(), JwtError> {
        let Some(name) = claims
            .get("cognito:username")
            .or_else(|| claims.get("username"))
        else {
            return Ok(());
        };
        let name = name.as_str().ok_or(JwtError::Revoked)?;
        let generation = match claims.get(GENERATION_CLAIM) {
            None => 0,
            Some(v) => v.as_u64().ok_or(JwtError::Revoked)?,
        };
        let sub = claims.get("sub").and_then(Value::as_str);
        self.refresh_users();
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        match users.store.get(name) {
            Some(u) if Some(u.sub.as_str()) == sub && u.generation == generation => Ok(()),
            _ => Err(JwtError::Revoked),
        }
    }

    /// Signs arbitrary claims with the built-in key (tests, tooling).
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, SecretsError> {
        self.signer.sign(claims)
    }

    /// Reloads the user pool if `users.json` changed on disk (`esb user`
    /// may edit it while we run): one `stat`, no read, when it did not. A
    /// file that fails to parse keeps the last good pool.
    fn refresh_users(&self) {
        let path = self.data_dir.join(USERS_FILE);
        let stamp = FileStamp::of(&path);
        if self.users.read().unwrap_or_else(|e| e.into_inner()).stamp == stamp {
            return;
        }
        match UserStore::load(&self.data_dir) {
            Ok(fresh) => {
                self.user_reloads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut cache = self.users.write().unwrap_or_else(|e| e.into_inner());
                cache.store = fresh;
                cache.stamp = stamp;
            }
            Err(e) => tracing::warn!("keeping the last good user pool: {e}"),
        }
    }

    /// Handles a login request body from `source`, running the Argon2
    /// check on tokio's blocking pool. Same answers as [`Auth::login`].
    pub async fn login_async(
        &self,
        body: &[u8],
        source: IpAddr,
        now_unix: i64,
        now: Instant,
    ) -> LoginResponse {
        match self.login_start(body, source, now_unix, now) {
            LoginStep::Answer(r) => r,
            LoginStep::Issue { client_id, user } => {
                self.login_finish(Some(user), false, &client_id, source, now_unix, now)
            }
            LoginStep::Password {
                client_id,
                user,
                password,
            } => {
                let checked = tokio::task::spawn_blocking(move || {
                    let hash = user.as_ref().map(|u| u.password_hash.as_str());
                    users::verify_password(hash, &password)
                        .then_some(user)
                        .flatten()
                })
                .await;
                match checked {
                    Ok(user) => self.login_finish(user, true, &client_id, source, now_unix, now),
                    Err(e) => {
                        tracing::error!("password check failed: {e}");
                        LoginResponse::error(500, "InternalErrorException", "Internal error")
                    }
                }
            }
        }
    }

    /// Handles a login request body from `source`. Unknown user and wrong
    /// password give the same answer; repeated failures give 429. Blocks
    /// for the Argon2 check: from async code prefer [`Auth::login_async`]
    /// (on a multi-threaded runtime this one uses `block_in_place`).
    pub fn login(&self, body: &[u8], source: IpAddr, now_unix: i64, now: Instant) -> LoginResponse {
        match self.login_start(body, source, now_unix, now) {
            LoginStep::Answer(r) => r,
            LoginStep::Issue { client_id, user } => {
                self.login_finish(Some(user), false, &client_id, source, now_unix, now)
            }
            LoginStep::Password {
                client_id,
                user,
                password,
            } => {
                let ok = blocking(|| {
                    users::verify_password(
                        user.as_ref().map(|u| u.password_hash.as_str()),
                        &password,
                    )
                });
                let user = if ok { user } else { None };
                self.login_finish(user, true, &client_id, source, now_unix, now)
            }
        }
    }

    /// Everything of a login up to the password check (cheap).
    fn login_start(&self, body: &[u8], source: IpAddr, now_unix: i64, now: Instant) -> LoginStep {
        if let Some(secs) = self.limiter.check(source, now) {
            return LoginStep::Answer(LoginResponse {
                retry_after: Some(secs),
                ..LoginResponse::error(
                    429,
                    "TooManyRequestsException",
                    "Too many failed attempts; retry later.",
                )
            });
        }
        let Ok(req) = serde_json::from_slice::<LoginRequest>(body) else {
            return LoginStep::Answer(LoginResponse::error(
                400,
                "InvalidParameterException",
                "Missing required parameter AuthParameters",
            ));
        };
        let param = |k: &str| req.auth_parameters.get(k).and_then(Value::as_str);
        let client_id = req.client_id.as_deref().unwrap_or(DEFAULT_CLIENT_ID);
        if client_id.len() > 128 {
            return LoginStep::Answer(LoginResponse::error(
                400,
                "InvalidParameterException",
                "Invalid ClientId",
            ));
        }
        let client_id = client_id.to_string();
        let flow = req.auth_flow.as_deref().unwrap_or("USER_PASSWORD_AUTH");
        match flow {
            "USER_PASSWORD_AUTH" | "ADMIN_USER_PASSWORD_AUTH" | "ADMIN_NO_SRP_AUTH" => {
                let (Some(name), Some(password)) = (param("USERNAME"), param("PASSWORD")) else {
                    return LoginStep::Answer(LoginResponse::error(
                        400,
                        "InvalidParameterException",
                        "Missing required parameter USERNAME or PASSWORD",
                    ));
                };
                self.refresh_users();
                let users = self.users.read().unwrap_or_else(|e| e.into_inner());
                LoginStep::Password {
                    client_id,
                    user: users.store.get(name).cloned(),
                    password: password.to_string(),
                }
            }
            "REFRESH_TOKEN_AUTH" | "REFRESH_TOKEN" => {
                let Some(token) = param("REFRESH_TOKEN") else {
                    return LoginStep::Answer(LoginResponse::error(
                        400,
                        "InvalidParameterException",
                        "Missing required parameter REFRESH_TOKEN",
                    ));
                };
                let invalid = || {
                    LoginStep::Answer(LoginResponse::error(
                        400,
                        "NotAuthorizedException",
                        "Invalid Refresh Token",
                    ))
                };
                let rules = Rules {
                    issuer: &self.issuer,
                    audiences: &[],
                    token_use: &["refresh"],
                };
                let Ok(claims) = jwt::verify(
                    jwt::strip_bearer(token),
                    std::slice::from_ref(self.signer.public()),
                    &rules,
                    now_unix,
                ) else {
                    return invalid();
                };
                // A removed user's refresh tokens, and those issued before
                // a password change, stop working.
                let Some(name) = claims.get("username").and_then(Value::as_str) else {
                    return invalid();
                };
                if self.check_not_revoked(&claims).is_err() {
                    return invalid();
                }
                let users = self.users.read().unwrap_or_else(|e| e.into_inner());
                match users.store.get(name) {
                    Some(u) => LoginStep::Issue {
                        client_id,
                        user: u.clone(),
                    },
                    None => invalid(),
                }
            }
            _ => LoginStep::Answer(LoginResponse::error(
                400,
                "InvalidParameterException",
                "Unsupported AuthFlow",
            )),
        }
    }

    /// Answers a login after the password check: `user` is `None` when it
    /// failed.
    fn login_finish(
        &self,
        user: Option<User>,
        issue_refresh: bool,
        client_id: &str,
        source: IpAddr,
        now_unix: i64,
        now: Instant,
    ) -> LoginResponse {
        let Some(user) = user else {
            let retry_after = self.limiter.failure(source, now);
            let mut r = LoginResponse::error(
                400,
                "NotAuthorizedException",
                "Incorrect username or password.",
            );
            if retry_after.is_some() {
                r.status = 429;
                r.retry_after = retry_after;
            }
            return r;
        };
        self.limiter.success(source);
        match self.issue_tokens(&user, client_id, issue_refresh, now_unix) {
            Ok(result) => LoginResponse {
                status: 200,
                body: json!({"AuthenticationResult": result, "ChallengeParameters": {}})
                    .to_string(),
                retry_after: None,
            },
            Err(e) => {
                tracing::error!("issuing tokens failed: {e}");
                LoginResponse::error(500, "InternalErrorException", "Internal error")
            }
        }
    }

    fn issue_tokens(
        &self,
        user: &User,
        client_id: &str,
        refresh: bool,
        now: i64,
    ) -> Result<Value, SecretsError> {
        let common = |token_use: &str, ttl: i64| {
            let mut m = Map::new();
            m.insert("sub".into(), json!(user.sub));
            m.insert("iss".into(), json!(self.issuer));
            m.insert("token_use".into(), json!(token_use));
            m.insert("iat".into(), json!(now));
            m.insert("auth_time".into(), json!(now));
            m.insert("exp".into(), json!(now + ttl));
            m.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert(GENERATION_CLAIM.into(), json!(user.generation));
            if !user.groups.is_empty() {
                m.insert("cognito:groups".into(), json!(user.groups));
            }
            m
        };
        let mut id = common("id", TOKEN_TTL_SECS);
        id.insert("aud".into(), json!(client_id));
        id.insert("cognito:username".into(), json!(user.username));
        let mut access = common("access", TOKEN_TTL_SECS);
        access.insert("client_id".into(), json!(client_id));
        access.insert("username".into(), json!(user.username));
        access.insert("scope".into(), json!("aws.cognito.signin.user.admin"));
        let mut result = json!({
            "IdToken": self.signer.sign(&id)?,
            "AccessToken": self.signer.sign(&access)?,
            "ExpiresIn": TOKEN_TTL_SECS,
            "TokenType": "Bearer",
        });
        if refresh {
            let mut r = common("refresh", REFRESH_TTL_SECS);
            r.insert("client_id".into(), json!(client_id));
            r.insert("username".into(), json!(user.username));
            result["RefreshToken"] = json!(self.signer.sign(&r)?);
        }
        Ok(result)
    }
}

/// Claims as API Gateway hands them to a REST integration
/// (`requestContext.authorizer.claims`): every value a string, times as
/// Java-style dates, arrays as `[a b]`.
pub fn claims_as_strings(claims: &Map<String, Value>) -> Map<String, Value> {
    claims
        .iter()
        .map(|(k, v)| {
            let s = match (k.as_str(), v) {
                ("exp" | "iat", Value::Number(n)) => {
                    n.as_i64().map_or_else(|| n.to_string(), java_date)
                }
                (_, Value::String(s)) => s.clone(),
                (_, Value::Array(a)) => format!(
                    "[{}]",
                    a.iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                (_, other) => other.to_string(),
            };
            (k.clone(), Value::String(s))
        })
        .collect()
}

/// `Sun Dec 17 07:28:12 UTC 2017` (the Java date form Cognito authorizers
/// give claims in).
fn java_date(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(
        || secs.to_string(),
        |t| t.format("%a %b %d %H:%M:%S UTC %Y").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_dates_use_the_java_form() {
        assert_eq!(java_date(1_513_495_692), "Sun Dec 17 07:28:12 UTC 2017");
        assert_eq!(java_date(0), "Thu Jan 01 00:00:00 UTC 1970");
    }

    fn open() -> (Auth, PathBuf) {
        let dir = std::env::temp_dir().join(format!("esb-auth-{}", uuid::Uuid::new_v4()));
        let mut users = UserStore::load(&dir).unwrap();
        users.add("testuser", "a long test password", &[]).unwrap();
        (Auth::open(&AuthConfig::new(&dir)).unwrap(), dir)
    }

    const NOW: i64 = 1_700_000_000;
    fn ip() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn login_issues_verifiable_tokens_and_refresh_works() {
        let (auth, dir) = open();
        assert_eq!(auth.generated(), ["credentials", "jwt signing key"]);
        let body =
            br#"{"AuthParameters": {"USERNAME": "testuser", "PASSWORD": "a long test password"}}"#;
        let r = auth.login(body, ip(), NOW, Instant::now());
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let res = &v["AuthenticationResult"];
        assert_eq!(res["TokenType"], "Bearer");
        assert_eq!(res["ExpiresIn"], 3600);
        let aud = vec![DEFAULT_CLIENT_ID.to_string()];
        let rules = Rules {
            issuer: DEFAULT_ISSUER,
            audiences: &aud,
            token_use: &["id"],
        };
        let claims = auth
            .verify_token(res["IdToken"].as_str().unwrap(), &rules, NOW)
            .unwrap();
        assert_eq!(claims["cognito:username"], "testuser");
        // The access token is not an ID token.
        assert_eq!(
            auth.verify_token(res["AccessToken"].as_str().unwrap(), &rules, NOW),
            Err(JwtError::TokenUse)
        );

        let refresh = json!({"AuthFlow": "REFRESH_TOKEN_AUTH", "AuthParameters": {"REFRESH_TOKEN": res["RefreshToken"]}});
        let r2 = auth.login(
            refresh.to_string().as_bytes(),
            ip(),
            NOW + 10,
            Instant::now(),
        );
        assert_eq!(r2.status, 200, "{}", r2.body);
        let v2: Value = serde_json::from_str(&r2.body).unwrap();
        assert!(v2["AuthenticationResult"]["IdToken"].is_string());
        assert!(v2["AuthenticationResult"].get("RefreshToken").is_none());
        // An ID token is no refresh token.
        let bad = json!({"AuthFlow": "REFRESH_TOKEN_AUTH", "AuthParameters": {"REFRESH_TOKEN": res["IdToken"]}});
        assert_eq!(
            auth.login(bad.to_string().as_bytes(), ip(), NOW, Instant::now())
                .status,
            400
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn password_login(auth: &Auth, user: &str, password: &str) -> LoginResponse {
        let body = json!({"AuthParameters": {"USERNAME": user, "PASSWORD": password}});
        auth.login(body.to_string().as_bytes(), ip(), NOW, Instant::now())
    }

    fn tokens(r: &LoginResponse) -> (String, String, String) {
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let t = |k: &str| v["AuthenticationResult"][k].as_str().unwrap().to_string();
        (t("IdToken"), t("AccessToken"), t("RefreshToken"))
    }

    fn refresh_status(auth: &Auth, refresh: &str) -> u16 {
        let body =
            json!({"AuthFlow": "REFRESH_TOKEN_AUTH", "AuthParameters": {"REFRESH_TOKEN": refresh}});
        auth.login(body.to_string().as_bytes(), ip(), NOW + 5, Instant::now())
            .status
    }

    #[test]
    fn refresh_token_is_never_a_bearer_token() {
        let (auth, dir) = open();
        let (id, access, refresh) =
            tokens(&password_login(&auth, "testuser", "a long test password"));
        // A JWT authorizer with no token_use rule (the gateway's HTTP API
        // case) still refuses the refresh token.
        let any = Rules {
            issuer: DEFAULT_ISSUER,
            audiences: &[],
            token_use: &[],
        };
        assert_eq!(
            auth.verify_token(&refresh, &any, NOW),
            Err(JwtError::TokenUse)
        );
        let explicit = Rules {
            token_use: &["refresh"],
            ..any.clone()
        };
        assert_eq!(
            auth.verify_token(&refresh, &explicit, NOW),
            Err(JwtError::TokenUse)
        );
        assert!(auth.verify_token(&id, &any, NOW).is_ok());
        assert!(auth.verify_token(&access, &any, NOW).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refresh_and_bearer_tokens_revoked_when_user_removed() {
        let (auth, dir) = open();
        let (id, _, refresh) = tokens(&password_login(&auth, "testuser", "a long test password"));
        assert_eq!(refresh_status(&auth, &refresh), 200);
        // `esb user remove` from another process rewrites the file.
        UserStore::load(&dir).unwrap().remove("testuser").unwrap();
        assert_eq!(refresh_status(&auth, &refresh), 400);
        let any = Rules {
            issuer: DEFAULT_ISSUER,
            ..Rules::default()
        };
        assert_eq!(auth.verify_token(&id, &any, NOW), Err(JwtError::Revoked));
        // Re-adding the same name gives a new `sub`: old tokens stay dead.
        UserStore::load(&dir)
            .unwrap()
            .add("testuser", "a long test password", &[])
            .unwrap();
        assert_eq!(refresh_status(&auth, &refresh), 400);
        assert_eq!(auth.verify_token(&id, &any, NOW), Err(JwtError::Revoked));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refresh_and_bearer_tokens_revoked_when_password_changes() {
        let (auth, dir) = open();
        let (id, access, refresh) =
            tokens(&password_login(&auth, "testuser", "a long test password"));
        UserStore::load(&dir)
            .unwrap()
            .set_password("testuser", "another long password")
            .unwrap();
        assert_eq!(refresh_status(&auth, &refresh), 400);
        let any = Rules {
            issuer: DEFAULT_ISSUER,
            ..Rules::default()
        };
        assert_eq!(auth.verify_token(&id, &any, NOW), Err(JwtError::Revoked));
        assert_eq!(
            auth.verify_token(&access, &any, NOW),
            Err(JwtError::Revoked)
        );
        // New tokens carry the new generation and work.
        let (id2, _, refresh2) =
            tokens(&password_login(&auth, "testuser", "another long password"));
        assert!(auth.verify_token(&id2, &any, NOW).is_ok());
        assert_eq!(refresh_status(&auth, &refresh2), 200);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn users_file_read_only_when_it_changes() {
        let (auth, dir) = open();
        for _ in 0..3 {
            assert_eq!(
                password_login(&auth, "testuser", "a long test password").status,
                200
            );
        }
        assert_eq!(
            auth.user_reloads.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "an unchanged users.json is not re-read"
        );
        UserStore::load(&dir)
            .unwrap()
            .add("second", "a second long password", &[])
            .unwrap();
        assert_eq!(
            password_login(&auth, "second", "a second long password").status,
            200
        );
        assert_eq!(
            password_login(&auth, "second", "a second long password").status,
            200
        );
        assert_eq!(
            auth.user_reloads.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // A broken file keeps the last good pool.
        std::fs::write(dir.join(USERS_FILE), b"{not json").unwrap();
        assert_eq!(
            password_login(&auth, "second", "a second long password").status,
            200
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn argon2_runs_off_the_async_thread() {
        let (auth, dir) = open();
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let body =
            br#"{"AuthParameters": {"USERNAME": "testuser", "PASSWORD": "a long test password"}}"#;
        let r = auth.login_async(body, ip(), NOW, Instant::now()).await;
        // On this single-threaded runtime the ticker can only have run
        // while the Argon2 check was elsewhere.
        let during = ticks.load(std::sync::atomic::Ordering::Relaxed);
        ticker.abort();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(during > 0, "the async thread was blocked by Argon2");
        let wrong =
            br#"{"AuthParameters": {"USERNAME": "testuser", "PASSWORD": "wrong password"}}"#;
        assert_eq!(
            auth.login_async(wrong, ip(), NOW, Instant::now())
                .await
                .status,
            400
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn data_dir_files_0600_and_dir_0700() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_auth, dir) = open();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for f in [CREDENTIALS_FILE, JWT_KEY_FILE, USERS_FILE] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a9_same_error_for_unknown_user_and_wrong_password_then_429() {
        let (auth, dir) = open();
        let t = Instant::now();
        let wrong = auth.login(
            br#"{"AuthParameters": {"USERNAME": "testuser", "PASSWORD": "nope"}}"#,
            ip(),
            NOW,
            t,
        );
        let unknown = auth.login(
            br#"{"AuthParameters": {"USERNAME": "ghost", "PASSWORD": "nope"}}"#,
            ip(),
            NOW,
            t,
        );
        assert_eq!(wrong, unknown);
        assert_eq!(wrong.status, 400);
        assert!(!wrong.body.contains("ghost"));
        let mut last = wrong;
        for _ in 0..5 {
            last = auth.login(
                br#"{"AuthParameters": {"USERNAME": "ghost", "PASSWORD": "x"}}"#,
                ip(),
                NOW,
                t,
            );
        }
        assert_eq!(last.status, 429);
        assert!(last.retry_after.is_some());
        // Even the right password waits while locked out.
        let ok = auth.login(
            br#"{"AuthParameters": {"USERNAME": "testuser", "PASSWORD": "a long test password"}}"#,
            ip(),
            NOW,
            t,
        );
        assert_eq!(ok.status, 429);
        // Malformed bodies are 400, never 500.
        for b in [&b""[..], b"[]", b"{\"AuthParameters\": 1}", b"\xff\xfe"] {
            assert_eq!(
                auth.login(b, "192.0.2.8".parse().unwrap(), NOW, t).status,
                400
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn api_keys_and_placeholders() {
        let (auth, dir) = open();
        let key = auth.credentials().api_key.clone();
        assert!(auth.check_api_key(Some(&key)));
        assert!(!auth.check_api_key(Some("wrong")));
        assert!(!auth.check_api_key(None));
        let mut cfg = AuthConfig::new(&dir);
        cfg.api_keys = vec!["dev-api-key-change-in-production".into()];
        let err = Auth::open(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("api key #1") && !err.contains("dev-api-key"),
            "{err}"
        );
        assert!(
            auth.lookup_secret(&auth.credentials().aws_access_key_id)
                .is_some()
        );
        assert!(auth.lookup_secret("AKIAOTHER").is_none());
        let jwks: Value = serde_json::from_str(&auth.jwks_json()).unwrap();
        assert_eq!(jwks["keys"][0]["alg"], "RS256");
        assert!(jwks["keys"][0].get("d").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn claims_render_as_strings() {
        let c = json!({"exp": 1513495692, "email_verified": true, "cognito:groups": ["a", "b"], "sub": "x"});
        let s = claims_as_strings(c.as_object().unwrap());
        assert_eq!(s["exp"], "Sun Dec 17 07:28:12 UTC 2017");
        assert_eq!(s["email_verified"], "true");
        assert_eq!(s["cognito:groups"], "[a b]");
    }
}
