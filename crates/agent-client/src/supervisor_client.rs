//! The host side of the supervisor's HTTP API: a [`Worker`] that sends
//! invocations to a container's supervisor over one keep-alive
//! connection, in the lean framing of `esb_container_supervisor::wire`
//! (raw event and result bodies, a few headers; no JSON or base64). Used by the docker backend inside the agent (status, readiness) and by
//! [`crate::AgentBackend`]
//! (the warm path never goes through the agent).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use esb_container_supervisor::wire::{self, ReadyResponse, StatusResponse};
use esb_runtimes_core::{Invocation, InvokeResult, Worker, WorkerError};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Extra time past the function's timeout before a silent supervisor is
/// given up on (the supervisor enforces the timeout itself).
const TRANSPORT_GRACE: Duration = Duration::from_secs(10);

/// A shared HTTP/1.1 client for supervisors (keep-alive, no Nagle): the
/// readiness and status calls. Invocations use each
/// [`ContainerWorker`]'s own connection.
#[derive(Clone, Debug)]
pub struct SupervisorClient {
    http: Client<HttpConnector, Full<Bytes>>,
    connect_timeout: Duration,
}

impl Default for SupervisorClient {
    fn default() -> Self {
        Self::with_connect_timeout(Duration::from_secs(2))
    }
}

/// Connect timeout of each readiness attempt: a container's first SYN is
/// sometimes dropped while its veth joins the bridge, and the kernel would
/// only retransmit it after 1 s (then 3 s) — the cold-start stalls. A new
/// attempt with a new SYN is far cheaper.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_millis(150);

impl SupervisorClient {
    /// A client whose connections give up after `connect_timeout`.
    pub fn with_connect_timeout(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(600))
            .build(connector);
        Self {
            http,
            connect_timeout,
        }
    }
}

/// A failed call to a supervisor.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made (the container is gone or not up yet).
    #[error("cannot connect to {0}")]
    Connect(SocketAddr),
    /// The connection broke or the answer was not understood.
    #[error("supervisor at {addr}: {message}")]
    Protocol {
        /// Supervisor address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The supervisor did not answer in time.
    #[error("supervisor at {0} did not answer in time")]
    Timeout(SocketAddr),
}

impl SupervisorClient {
    async fn call(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Bytes,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        self.exchange(addr, method, path, HeaderMap::new(), body, limit)
            .await
            .map(|(status, _, body)| (status, body))
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
        limit: Duration,
    ) -> Result<(StatusCode, HeaderMap, Bytes), CallError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(body))
            .map_err(|e| CallError::Protocol {
                addr,
                message: e.to_string(),
            })?;
        *request.headers_mut() = headers;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    CallError::Connect(addr)
                } else {
                    CallError::Protocol {
                        addr,
                        message: e.to_string(),
                    }
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| CallError::Protocol {
                    addr,
                    message: e.to_string(),
                })?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| CallError::Timeout(addr))?
    }

    /// Waits until the supervisor at `addr` is up and its runtime finished
    /// init; retries refused connections until `limit`.
    ///
    /// Returns the init duration, or the init error JSON as `Err(Ok(..))`.
    pub async fn wait_ready(
        &self,
        addr: SocketAddr,
        limit: Duration,
    ) -> Result<Option<Duration>, Result<Bytes, CallError>> {
        let deadline = tokio::time::Instant::now() + limit;
        let ready_client = Self::with_connect_timeout(READY_CONNECT_TIMEOUT);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match ready_client
                .call(addr, Method::GET, "/ready", Bytes::new(), left)
                .await
            {
                Ok((status, body)) => {
                    let ready: ReadyResponse = serde_json::from_slice(&body).map_err(|e| {
                        Err(CallError::Protocol {
                            addr,
                            message: e.to_string(),
                        })
                    })?;
                    if status == StatusCode::OK {
                        return Ok(ready.init_duration_us.map(Duration::from_micros));
                    }
                    return Err(Ok(Bytes::from(ready.error.unwrap_or_default())));
                }
                Err(CallError::Connect(_)) | Err(CallError::Protocol { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                Err(e) => return Err(Err(e)),
            }
        }
    }

    /// The supervisor's status (janitor, adoption).
    pub async fn status(
        &self,
        addr: SocketAddr,
        limit: Duration,
    ) -> Result<StatusResponse, CallError> {
        let (_, body) = self
            .call(addr, Method::GET, "/status", Bytes::new(), limit)
            .await?;
        serde_json::from_slice(&body).map_err(|e| CallError::Protocol {
            addr,
            message: e.to_string(),
        })
    }
}

/// Called when a worker is stopped by the pool (destroy its container).
#[async_trait::async_trait]
pub trait WorkerOwner: Send + Sync {
    /// Removes the worker's sandbox.
    async fn destroy(&self, worker_id: &str);
}

/// The sending half of a worker's own HTTP/1.1 connection.
type Sender = http1::SendRequest<Full<Bytes>>;

/// One container worker as the pool sees it.
///
/// It holds one HTTP/1.1 connection to its supervisor for its whole life
/// (made on the first invocation, made again only when the supervisor
/// closed it): the pool sends a worker one invocation at a time, so a
/// shared connection pool would only add a checkout per call and, when a
/// connection is not back in it yet, a new connection (a SYN across the
/// bridge) under load.
pub struct ContainerWorker {
    id: String,
    addr: SocketAddr,
    timeout: Duration,
    client: SupervisorClient,
    alive: Arc<AtomicBool>,
    owner: Arc<dyn WorkerOwner>,
    connection: tokio::sync::Mutex<Option<Sender>>,
}

impl std::fmt::Debug for ContainerWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerWorker")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ContainerWorker {
    /// A worker whose supervisor listens at `addr`; `alive` is shared with
    /// whoever watches the engine's events.
    pub fn new(
        id: String,
        addr: SocketAddr,
        timeout: Duration,
        client: SupervisorClient,
        alive: Arc<AtomicBool>,
        owner: Arc<dyn WorkerOwner>,
    ) -> Self {
        Self {
            id,
            addr,
            timeout,
            client,
            alive,
            owner,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<Sender, CallError> {
        let addr = self.addr;
        let stream = tokio::time::timeout(self.client.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| CallError::Connect(addr))?
            .map_err(|_| CallError::Connect(addr))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| CallError::Connect(addr))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// One exchange on the worker's connection. A request the connection
    /// could not take (closed meanwhile) is sent once more on a new one;
    /// nothing is sent twice.
    async fn exchange(
        &self,
        sender_slot: &mut Option<Sender>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), CallError> {
        let addr = self.addr;
        let protocol = |message: String| CallError::Protocol { addr, message };
        let mut fresh = false;
        loop {
            let mut sender = match sender_slot.take() {
                Some(sender) if !sender.is_closed() => sender,
                _ => {
                    fresh = true;
                    self.connect().await?
                }
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(CallError::Connect(addr));
                }
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map_err(|e| protocol(e.to_string()))?
                        .to_bytes();
                    *sender_slot = Some(sender);
                    return Ok((parts.status, parts.headers, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    Some(_) => return Err(CallError::Connect(addr)),
                    None => return Err(protocol(e.into_error().to_string())),
                },
            }
        }
    }

    /// The supervisor's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

#[async_trait::async_trait]
impl Worker for ContainerWorker {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvokeResult, WorkerError> {
        if !self.is_alive() {
            return Err(WorkerError::Gone(self.id.clone()));
        }
        let limit = invocation
            .timeout
            .map_or(self.timeout, |t| t.min(self.timeout))
            + TRANSPORT_GRACE;
        let headers =
            wire::invoke_headers(&invocation).map_err(|e| self.transport(e.to_string()))?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/invoke")
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Full::new(invocation.payload))
            .map_err(|e| self.transport(e.to_string()))?;
        request.headers_mut().extend(headers);
        // The pool sends one invocation at a time per worker; a second one
        // meanwhile is refused as the supervisor would refuse it.
        let Ok(mut connection) = self.connection.try_lock() else {
            return Err(WorkerError::Busy(self.id.clone()));
        };
        let result =
            match tokio::time::timeout(limit, self.exchange(&mut connection, request)).await {
                Ok(result) => result,
                Err(_) => {
                    // The connection is mid-exchange: it is dropped with it.
                    connection.take();
                    Err(CallError::Timeout(self.addr))
                }
            };
        drop(connection);
        let (status, headers, body) = match result {
            Ok(answer) => answer,
            Err(CallError::Connect(_)) => {
                // Nothing was delivered: the pool may retry elsewhere.
                self.alive.store(false, Ordering::SeqCst);
                return Err(WorkerError::Gone(self.id.clone()));
            }
            Err(other) => {
                self.alive.store(false, Ordering::SeqCst);
                return Err(self.transport(other.to_string()));
            }
        };
        match status {
            StatusCode::OK => {}
            StatusCode::GONE => {
                self.alive.store(false, Ordering::SeqCst);
                return Err(WorkerError::Gone(self.id.clone()));
            }
            StatusCode::CONFLICT => return Err(WorkerError::Busy(self.id.clone())),
            other => {
                return Err(self.transport(format!(
                    "status {other}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
        }
        let result = wire::result_from(&headers, body)
            .ok_or_else(|| self.transport("invalid invoke response".to_string()))?;
        if !result.worker_alive {
            self.alive.store(false, Ordering::SeqCst);
        }
        Ok(result)
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    async fn stop(&self) {
        self.alive.store(false, Ordering::SeqCst);
        self.owner.destroy(&self.id).await;
    }
}

impl ContainerWorker {
    fn transport(&self, message: String) -> WorkerError {
        WorkerError::Transport {
            worker: self.id.clone(),
            message,
        }
    }
}
