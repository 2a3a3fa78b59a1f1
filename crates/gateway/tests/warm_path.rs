//! Warm-path budget: allocations per routed request through
//! [`esb_gateway::handle`] with an invoker that answers at once, so the
//! count is the gateway's own. A change that adds allocations (or a JSON
//! re-parse) per request fails here before it shows in a benchmark.
#![allow(clippy::unwrap_used)] // tests may unwrap
#![allow(unsafe_code)] // a counting global allocator is an `unsafe impl`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use esb_gateway::{
    ApiConfig, ApiKind, GatewayAuth, GatewayConfig, GatewayState, Invoker, PayloadVersion,
    RouteAuth, RouteConfig, RouteTarget, handle,
};
use esb_pool::PoolError;
use esb_runtimes_core::{FunctionSpec, Invocation, InvocationOutcome, InvokeResult};
use http::Request;
use http_body_util::{BodyExt, Full};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Fixed;

#[async_trait::async_trait]
impl Invoker for Fixed {
    async fn invoke(&self, _: &str, _: Invocation) -> Result<InvokeResult, PoolError> {
        Ok(InvokeResult {
            outcome: InvocationOutcome::Success(Bytes::from_static(
                br#"{"statusCode":200,"headers":{"content-type":"text/plain"},"body":"ok"}"#,
            )),
            log_tail: String::new(),
            duration: std::time::Duration::ZERO,
            init_duration: None,
            worker_alive: true,
        })
    }

    fn function(&self, _: &str) -> Option<Arc<FunctionSpec>> {
        None
    }
}

fn route(api: &str, path: &str, v: PayloadVersion) -> RouteConfig {
    RouteConfig {
        api_id: api.into(),
        method: "GET".into(),
        path: path.into(),
        target: RouteTarget::Function("f".into()),
        payload_version: v,
        auth: RouteAuth::None,
        api_key_required: false,
        scopes: Vec::new(),
    }
}

fn state() -> GatewayState {
    let config = GatewayConfig {
        apis: vec![
            ApiConfig::new("Rest", ApiKind::Rest),
            ApiConfig::new("Http", ApiKind::Http),
        ],
        routes: vec![
            route("Rest", "/pets/{id}", PayloadVersion::V1),
            route("Http", "/orders/{id}", PayloadVersion::V2),
        ],
        auth: GatewayAuth::Open,
        ..Default::default()
    };
    GatewayState::with_invoker(config, Arc::new(Fixed)).unwrap()
}

async fn one(state: &GatewayState, uri: &str) {
    let req = Request::get(uri)
        .header("host", "localhost:3000")
        .header("user-agent", "wrk")
        .header("accept", "*/*")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = handle(state, req, "127.0.0.1:4000".parse().unwrap()).await;
    assert_eq!(r.status(), 200);
    let _ = r.into_body().collect().await.unwrap();
}

/// Allocations per request, averaged over many warm requests.
async fn per_request(state: &GatewayState, uri: &str) -> usize {
    for _ in 0..10 {
        one(state, uri).await;
    }
    const N: usize = 200;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let start = std::time::Instant::now();
    for _ in 0..N {
        one(state, uri).await;
    }
    let per = (ALLOCATIONS.load(Ordering::Relaxed) - before) / N;
    eprintln!(
        "{uri}: {per} allocations, {:?} per request",
        start.elapsed() / N as u32
    );
    per
}

#[tokio::test(flavor = "current_thread")]
async fn warm_request_allocation_budget() {
    let state = state();
    // Before the pipeline split: 75 (REST) and 69 (HTTP); after: 74 and
    // 68 (debug build). Raise only with a reason.
    let rest = per_request(&state, "/Prod/pets/42?sort=asc&tag=a+b").await;
    let http = per_request(&state, "/orders/7?x=1&x=2").await;
    assert!(rest <= REST_BUDGET, "REST v1 request: {rest} allocations");
    assert!(http <= HTTP_BUDGET, "HTTP 2.0 request: {http} allocations");
}

const REST_BUDGET: usize = 78;
const HTTP_BUDGET: usize = 72;
