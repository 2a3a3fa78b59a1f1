//! Listener, limits in front of s3s, data-directory checks, buckets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::{KeyGuard, KeyRing};
use crate::host::LocalHosts;
use crate::keymap::MappedFs;
use crate::listener::{self, Limits, TimedBody};

/// Errors starting the S3 endpoint.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The data directory (or a file in it) cannot be used.
    #[error("s3 data {path}: {message}")]
    Data {
        /// The offending file or directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A bucket name from the template is not a valid S3 bucket name.
    #[error("invalid bucket name {0:?}")]
    BucketName(String),
    /// s3s-fs refused the root directory.
    #[error("s3 storage at {path}: {message}")]
    Storage {
        /// Root directory.
        path: PathBuf,
        /// s3s-fs's error (it implements no `std::error::Error`).
        message: String,
    },
    /// The listener failed.
    #[error("s3 listener: {0}")]
    Io(#[from] std::io::Error),
}

/// How to run the endpoint.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Directory holding buckets and objects (created when missing).
    pub root: PathBuf,
    /// The one access key accepted.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// Base domains for virtual-hosted-style addressing.
    pub hosts: LocalHosts,
    /// Largest request body accepted (bytes). AWS allows 5 GiB per PUT.
    pub max_body_bytes: u64,
    /// Header, body and idle timeouts and the connection cap (robustness
    /// H10/H11; see [`crate::listener`]).
    pub limits: Limits,
    /// Told about successful object writes (S3 → Lambda notifications).
    pub hook: crate::HookSlot,
    /// Per-function credentials and policies; `None`: only the box's key.
    pub iam: Option<std::sync::Arc<esb_iam::Iam>>,
    /// Told about each answered request (operation, status): `/metrics`.
    pub on_operation: Option<crate::OperationObserver>,
}

impl S3Config {
    /// Defaults for `root` and credentials: localhost domains, 5 GiB bodies,
    /// the listener limits of robustness.md.
    pub fn new(root: PathBuf, access_key_id: String, secret_access_key: String) -> Self {
        Self {
            root,
            access_key_id,
            secret_access_key,
            hosts: LocalHosts::default(),
            max_body_bytes: 5 * 1024 * 1024 * 1024,
            limits: Limits::default(),
            hook: crate::HookSlot::default(),
            iam: None,
            on_operation: None,
        }
    }
}

/// A running S3 endpoint.
#[derive(Debug)]
pub struct S3Server {
    local_addr: SocketAddr,
    root: PathBuf,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl S3Server {
    /// Checks the data directory, then serves S3 on `listener` until
    /// [`S3Server::shutdown`].
    pub async fn start(config: S3Config, listener: TcpListener) -> Result<Self, S3Error> {
        let root = prepare_root(&config.root)?;
        let fs = MappedFs::new(&root)
            .map_err(|message| S3Error::Storage {
                path: root.clone(),
                message,
            })?
            .with_hook(config.hook.clone());
        let mut builder = S3ServiceBuilder::new(fs);
        match &config.iam {
            Some(iam) => builder.set_auth(KeyRing {
                access_key_id: config.access_key_id.clone(),
                secret_access_key: config.secret_access_key.clone().into(),
                iam: iam.clone(),
            }),
            None => builder.set_auth(SimpleAuth::from_single(
                config.access_key_id.clone(),
                config.secret_access_key.clone(),
            )),
        }
        builder.set_access(KeyGuard {
            iam: config.iam.clone(),
        });
        builder.set_host(config.hosts.clone());
        let service = builder.build();
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let max_body = config.max_body_bytes;
        let hook = config.hook.0.clone();
        let hosts = config.hosts.clone();
        let observe = config.on_operation.clone();
        let task = tokio::spawn(listener::serve(
            listener,
            config.limits,
            stopped,
            "s3",
            move |req| {
                let service = service.clone();
                let hook = hook.clone();
                let hosts = hosts.clone();
                let observe = observe.clone();
                async move {
                    let op = observe.as_ref().map(|_| {
                        crate::ops::operation(req.method(), req.uri(), req.headers(), &hosts)
                    });
                    let resp = serve_one(service, req, max_body, hook, &hosts).await;
                    if let (Some(observe), Some(op)) = (observe, op) {
                        (observe.0)(op, resp.status().as_u16());
                    }
                    resp
                }
            },
        ));
        Ok(Self {
            local_addr,
            root,
            stop,
            task,
        })
    }
}

/// One request: limits, s3s, then the write hook (notifications).
async fn serve_one(
    service: S3Service,
    req: http::Request<TimedBody>,
    max_body: u64,
    hook: Option<std::sync::Arc<dyn crate::WriteHook>>,
    hosts: &LocalHosts,
) -> Response {
    let Some(hook) = hook else {
        return handle(service, req, max_body).await;
    };
    let (parts, body) = req.into_parts();
    let write = crate::notify::classify(&parts, hosts).filter(|(bucket, ..)| hook.watches(bucket));
    let trace = parts
        .headers
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let resp = handle(service, http::Request::from_parts(parts, body), max_body).await;
    if let Some((bucket, key, kind, size)) = write
        && resp.status().is_success()
    {
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_matches('"').to_string())
        };
        hook.written(crate::ObjectWrite {
            bucket,
            key,
            kind,
            size,
            etag: header("etag"),
            trace,
            request_id: header("x-amz-request-id").unwrap_or_default(),
        })
        .await;
    }
    resp
}

impl S3Server {
    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The (canonical) directory holding the buckets.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the buckets that do not exist yet; see [`ensure_buckets`].
    pub fn ensure_buckets(&self, names: &[String]) -> Result<Vec<String>, S3Error> {
        ensure_buckets(&self.root, names)
    }

    /// Stops accepting, lets requests in flight finish (bounded by the
    /// caller's own timeout), and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

type Response = http::Response<s3s::Body>;

/// Limits the body, then hands the request to s3s.
async fn handle(service: S3Service, req: http::Request<TimedBody>, max_body: u64) -> Response {
    let declared = req
        .headers()
        .get("x-amz-decoded-content-length")
        .or_else(|| req.headers().get(http::header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return error_response(
            http::StatusCode::BAD_REQUEST,
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size",
        );
    }
    // aws-chunked framing adds a little to the wire size; allow for it so a
    // body at the limit is not cut off, while a body with no length header
    // is still bounded.
    let wire_limit =
        usize::try_from(max_body.saturating_add(max_body / 64 + 64 * 1024)).unwrap_or(usize::MAX);
    let req = req.map(|b| s3s::Body::http_body_unsync(Limited::new(b, wire_limit)));
    match service.call(req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!("s3 request failed: {e:?}");
            error_response(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            )
        }
    }
}

fn error_response(status: http::StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut resp = http::Response::new(s3s::Body::http_body(
        Full::new(Bytes::from(body)).map_err(|never| match never {}),
    ));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    resp
}

/// Creates `root` when missing and checks that it and the sidecar files
/// s3s-fs keeps at its top level can be read. A damaged file fails start-up
/// naming it, instead of being silently treated as absent later.
fn prepare_root(root: &Path) -> Result<PathBuf, S3Error> {
    let data_err = |path: &Path, message: String| S3Error::Data {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::metadata(root) {
        Ok(m) if !m.is_dir() => return Err(data_err(root, "is not a directory".into())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(root)
                .map_err(|e| data_err(root, format!("cannot create: {e}")))?;
        }
        Err(e) => return Err(data_err(root, e.to_string())),
    }
    let entries = std::fs::read_dir(root).map_err(|e| data_err(root, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| data_err(root, e.to_string()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".bucket-") && name.ends_with(".json") {
            let bytes = std::fs::read(&path).map_err(|e| data_err(&path, e.to_string()))?;
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| data_err(&path, format!("corrupt metadata: {e}")))?;
        } else if !name.starts_with('.') {
            // A bucket: it must be a readable directory.
            let meta = entry
                .metadata()
                .map_err(|e| data_err(&path, e.to_string()))?;
            if !meta.is_dir() {
                return Err(data_err(
                    &path,
                    "is not a bucket directory (unexpected file in the s3 data directory)".into(),
                ));
            }
            std::fs::read_dir(&path).map_err(|e| data_err(&path, e.to_string()))?;
        }
    }
    std::fs::canonicalize(root).map_err(|e| data_err(root, e.to_string()))
}

/// S3's bucket naming rules (3–63 characters of lower-case letters, digits,
/// `.` and `-`, starting and ending with a letter or digit, no `..`, not an
/// IP address).
pub fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// Creates each bucket's directory under `root` if it does not exist yet
/// (a bucket in s3s-fs is a directory). Returns the buckets created.
pub fn ensure_buckets(root: &Path, names: &[String]) -> Result<Vec<String>, S3Error> {
    let mut created = Vec::new();
    for name in names {
        if !valid_bucket_name(name) {
            return Err(S3Error::BucketName(name.clone()));
        }
        let dir = root.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => created.push(name.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !dir.is_dir() {
                    return Err(S3Error::Data {
                        path: dir,
                        message: "exists but is not a bucket directory".into(),
                    });
                }
            }
            Err(e) => {
                return Err(S3Error::Data {
                    path: dir,
                    message: format!("cannot create bucket: {e}"),
                });
            }
        }
    }
    Ok(created)
}
