//! Start-up (database file checks, dynoxide's own thread), the public
//! listener, tables, shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use esb_services_s3::listener::{self, Limits};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::front::{DEFAULT_MAX_BODY, Front};
use crate::tables::{TableSpec, create_table_request};

/// Errors starting or preparing the DynamoDB endpoint.
#[derive(Debug, thiserror::Error)]
pub enum DynamoError {
    /// The database file (or its directory) cannot be used.
    #[error("dynamodb data {path}: {message}")]
    Data {
        /// The offending file or directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A table from the template could not be created.
    #[error("cannot create table {table}: {message}")]
    Table {
        /// Table name.
        table: String,
        /// dynoxide's error.
        message: String,
    },
    /// dynoxide's thread could not be started or died during start-up.
    #[error("dynamodb engine: {0}")]
    Engine(String),
    /// The listener failed.
    #[error("dynamodb listener: {0}")]
    Io(#[from] std::io::Error),
}

/// How to run the endpoint.
#[derive(Debug, Clone)]
pub struct DynamoConfig {
    /// The SQLite file (created with its directory when missing).
    pub path: PathBuf,
    /// The one access key accepted.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// Largest request body (DynamoDB's limit is 16 MB).
    pub max_body_bytes: usize,
    /// How often expired TTL items are deleted.
    pub ttl_sweep_interval: Duration,
    /// Header, body and idle timeouts and the connection cap (robustness
    /// H10/H11; see `esb_services_s3::listener`).
    pub limits: Limits,
    /// Per-function credentials and policies; `None`: only the box's key.
    pub iam: Option<Arc<esb_iam::Iam>>,
    /// Told about each answered request (operation, status): `/metrics`.
    pub on_operation: Option<crate::OperationObserver>,
    /// Region and account that stream and table ARNs show (dynoxide's own
    /// placeholders when `None`); see `streams.rs`.
    pub stream_identity: Option<crate::StreamIdentity>,
}

impl DynamoConfig {
    /// Defaults: 16 MB bodies, a TTL sweep every minute.
    pub fn new(path: PathBuf, access_key_id: String, secret_access_key: String) -> Self {
        Self {
            path,
            access_key_id,
            secret_access_key,
            max_body_bytes: DEFAULT_MAX_BODY,
            ttl_sweep_interval: Duration::from_secs(60),
            limits: Limits::default(),
            iam: None,
            on_operation: None,
            stream_identity: None,
        }
    }
}

/// A running DynamoDB endpoint.
pub struct DynamoServer {
    local_addr: SocketAddr,
    db: dynoxide::Database,
    stop_front: watch::Sender<bool>,
    front_task: JoinHandle<()>,
    stop_engine: oneshot::Sender<()>,
    engine: std::thread::JoinHandle<()>,
}

impl DynamoServer {
    /// Opens (or creates) the database, starts dynoxide on its own thread
    /// and serves the verified API on `listener`.
    pub async fn start(config: DynamoConfig, listener: TcpListener) -> Result<Self, DynamoError> {
        let db = open_database(&config.path)?;
        let (stop_engine, engine_stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<SocketAddr, String>>();
        let engine_db = db.clone();
        let sweep = config.ttl_sweep_interval;
        let engine = std::thread::Builder::new()
            .name("esb-dynamodb".into())
            .spawn(move || run_engine(engine_db, sweep, ready_tx, engine_stopped))
            .map_err(|e| DynamoError::Engine(e.to_string()))?;
        let backend = match ready_rx.await {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => return Err(DynamoError::Engine(e)),
            Err(_) => return Err(DynamoError::Engine("engine thread exited".into())),
        };
        let backend = http::uri::Authority::try_from(backend.to_string().as_str())
            .map_err(|e| DynamoError::Engine(e.to_string()))?;
        let front = Arc::new(Front {
            access_key_id: config.access_key_id,
            secret_access_key: config.secret_access_key,
            backend,
            client: Client::builder(TokioExecutor::new()).build_http(),
            max_body: config.max_body_bytes,
            iam: config.iam,
            identity: config.stream_identity,
            on_operation: config.on_operation,
        });
        let local_addr = listener.local_addr()?;
        let (stop_front, front_stopped) = watch::channel(false);
        let front_task = tokio::spawn(listener::serve(
            listener,
            config.limits,
            front_stopped,
            "dynamodb",
            move |req| crate::front::handle(front.clone(), req),
        ));
        Ok(Self {
            local_addr,
            db,
            stop_front,
            front_task,
            stop_engine,
            engine,
        })
    }

    /// The public address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The database (for in-process use: triggers, tests).
    pub fn database(&self) -> &dynoxide::Database {
        &self.db
    }

    /// Creates the tables that do not exist yet (an existing table is kept
    /// as it is, data included). Returns the names created. Blocks on
    /// SQLite: call it at start-up or from a blocking task.
    pub fn ensure_tables(&self, specs: &[TableSpec]) -> Result<Vec<String>, DynamoError> {
        ensure_tables(&self.db, specs)
    }

    /// Stops accepting, finishes requests in flight, stops dynoxide and
    /// closes the database.
    pub async fn shutdown(self) {
        let _ = self.stop_front.send(true);
        let _ = self.front_task.await;
        let _ = self.stop_engine.send(());
        drop(self.db);
        let engine = self.engine;
        let _ = tokio::task::spawn_blocking(move || engine.join()).await;
    }
}

impl std::fmt::Debug for DynamoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Creates the tables of `specs` missing from `db` (a running server's
/// database, for a template reload). Blocks on SQLite.
pub fn ensure_tables(
    db: &dynoxide::Database,
    specs: &[TableSpec],
) -> Result<Vec<String>, DynamoError> {
    let table_err = |table: &str, message: String| DynamoError::Table {
        table: table.to_string(),
        message,
    };
    let mut created = Vec::new();
    for spec in specs {
        let describe = serde_json::from_value(serde_json::json!({"TableName": spec.name}))
            .map_err(|e| table_err(&spec.name, e.to_string()))?;
        match db.describe_table(describe) {
            Ok(_) => continue,
            Err(dynoxide::DynoxideError::ResourceNotFoundException(_)) => {}
            Err(e) => return Err(table_err(&spec.name, e.to_string())),
        }
        let request = serde_json::from_value(create_table_request(spec))
            .map_err(|e| table_err(&spec.name, e.to_string()))?;
        db.create_table(request)
            .map_err(|e| table_err(&spec.name, e.to_string()))?;
        if let Some(attr) = &spec.ttl_attribute {
            let ttl = serde_json::from_value(serde_json::json!({
                "TableName": spec.name,
                "TimeToLiveSpecification": {"AttributeName": attr, "Enabled": true},
            }))
            .map_err(|e| table_err(&spec.name, e.to_string()))?;
            db.update_time_to_live(ttl)
                .map_err(|e| table_err(&spec.name, e.to_string()))?;
        }
        created.push(spec.name.clone());
    }
    Ok(created)
}

/// Opens the SQLite file, failing with its path when it is unreadable or
/// not a database (it is never replaced by an empty one).
fn open_database(path: &Path) -> Result<dynoxide::Database, DynamoError> {
    let data_err = |message: String| DynamoError::Data {
        path: path.to_path_buf(),
        message,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| DynamoError::Data {
            path: dir.to_path_buf(),
            message: format!("cannot create directory: {e}"),
        })?;
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return Err(data_err("is not a file".into())),
        Ok(_) => {
            // Opening for reading first gives a plain permission error
            // instead of SQLite's "unable to open database file".
            std::fs::File::open(path).map_err(|e| data_err(e.to_string()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(data_err(e.to_string())),
    }
    let text = path
        .to_str()
        .ok_or_else(|| data_err("path is not valid UTF-8".into()))?;
    let db = dynoxide::Database::new(text).map_err(|e| data_err(e.to_string()))?;
    // A damaged file can open and fail only on the first read.
    let list = serde_json::from_value(serde_json::json!({}))
        .map_err(|e: serde_json::Error| data_err(e.to_string()))?;
    db.list_tables(list).map_err(|e| data_err(e.to_string()))?;
    Ok(db)
}

/// dynoxide's thread: a current-thread runtime serving its router on a
/// loopback port, plus the TTL sweep, until `stopped` fires.
fn run_engine(
    db: dynoxide::Database,
    sweep: Duration,
    ready: oneshot::Sender<Result<SocketAddr, String>>,
    stopped: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot bind loopback: {e}")));
                return;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        let sweeper_db = db.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep.max(Duration::from_secs(1)));
            tick.tick().await;
            loop {
                tick.tick().await;
                match sweeper_db.sweep_ttl() {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!("dynamodb: deleted {n} expired item(s)"),
                    Err(e) => tracing::warn!("dynamodb: TTL sweep failed: {e}"),
                }
            }
        });
        let _ = ready.send(Ok(addr));
        let served = dynoxide::server::serve_with_shutdown(listener, db, async move {
            let _ = stopped.await;
        })
        .await;
        sweeper.abort();
        if let Err(e) = served {
            tracing::warn!("dynamodb engine stopped: {e}");
        }
    });
}
