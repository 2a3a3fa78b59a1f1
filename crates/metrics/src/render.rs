//! Turns a snapshot of the counters into Prometheus text with
//! `prometheus-client`'s encoder (a fresh registry holding one collector
//! per scrape: the counters themselves live in ESB's atomics).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::process::ProcessSample;
use crate::{
    AsyncSample, FunctionSample, Histogram, RouteCounters, STATUS_LABELS, ServiceCounters,
};

#[derive(Debug)]
pub(crate) struct Snapshot {
    pub functions: Vec<FunctionSample>,
    pub async_queue: AsyncSample,
    pub routes: Vec<Arc<RouteCounters>>,
    pub services: Vec<Arc<ServiceCounters>>,
    pub process: ProcessSample,
}

pub(crate) fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::with_capacity(64 * 1024);
    // Writing to a String cannot fail; an encoder error would be a bug.
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

type Fmt = Result<(), std::fmt::Error>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> Fmt {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl Iterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> Fmt {
    let mut family = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            ConstGauge::new(v).encode(family)?;
            break;
        }
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram<'h>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Vec<(&'static str, String)>, &'h Histogram)>,
) -> Fmt {
    let mut family =
        enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, h) in rows {
        let (sum, count, buckets) = h.snapshot();
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

fn by_fn(f: &FunctionSample) -> Vec<(&'static str, String)> {
    vec![("function", f.name.clone())]
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        let fns = &self.functions;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut enc,
            "esb_function_invocations",
            "Invocations that ran (Lambda Invocations).",
            fns.iter()
                .map(|f| (by_fn(f), load(&f.counters.invocations))),
        )?;
        counter(
            &mut enc,
            "esb_function_errors",
            "Invocations that ended in an error, a timeout or a worker failure (Lambda Errors).",
            fns.iter().map(|f| (by_fn(f), load(&f.counters.errors))),
        )?;
        counter(
            &mut enc,
            "esb_function_throttles",
            "Requests refused because no worker became free (Lambda Throttles).",
            fns.iter().map(|f| (by_fn(f), load(&f.counters.throttles))),
        )?;
        counter(
            &mut enc,
            "esb_function_cold_starts",
            "Invocations that started a new worker.",
            fns.iter()
                .map(|f| (by_fn(f), load(&f.counters.cold_starts))),
        )?;
        histogram(
            &mut enc,
            "esb_function_duration",
            "Time from handing the event over to the response (Lambda Duration).",
            fns.iter().map(|f| (by_fn(f), &f.counters.duration)),
        )?;
        histogram(
            &mut enc,
            "esb_function_init_duration",
            "Init duration of cold starts (REPORT Init Duration).",
            fns.iter().map(|f| (by_fn(f), &f.counters.init_duration)),
        )?;
        gauge(
            &mut enc,
            "esb_function_concurrent_executions",
            "Invocations in progress (Lambda ConcurrentExecutions).",
            None,
            fns.iter().map(|f| {
                let v = f.counters.concurrent.load(Ordering::Relaxed).max(0);
                (by_fn(f), v)
            }),
        )?;
        gauge(
            &mut enc,
            "esb_function_workers",
            "Workers by state (warm: idle, busy: running, starting).",
            None,
            fns.iter().flat_map(|f| {
                [("warm", f.warm), ("busy", f.busy), ("starting", f.starting)]
                    .into_iter()
                    .map(|(state, n)| {
                        (
                            vec![("function", f.name.clone()), ("state", state.to_string())],
                            i64::try_from(n).unwrap_or(i64::MAX),
                        )
                    })
            }),
        )?;
        gauge(
            &mut enc,
            "esb_function_waiting_requests",
            "Synchronous requests waiting for a worker.",
            None,
            fns.iter()
                .map(|f| (by_fn(f), i64::try_from(f.waiting).unwrap_or(i64::MAX))),
        )?;
        gauge(
            &mut enc,
            "esb_async_queue_depth",
            "Event (asynchronous) invocations held per function.",
            None,
            self.async_queue.depth.iter().map(|(name, n)| {
                (
                    vec![("function", name.clone())],
                    i64::try_from(*n).unwrap_or(i64::MAX),
                )
            }),
        )?;
        {
            let age = self
                .async_queue
                .oldest_age
                .map(|a| a.as_secs_f64())
                .unwrap_or(0.0);
            let family = enc.encode_descriptor(
                "esb_async_queue_oldest_age",
                "Age of the oldest held Event invocation (0 when none).",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(age).encode(family)?;
        }
        counter(
            &mut enc,
            "esb_gateway_requests",
            "Requests answered by the gateway, by API, route and status.",
            self.routes.iter().flat_map(|r| {
                r.by_status.iter().enumerate().filter_map(move |(i, c)| {
                    let v = c.load(Ordering::Relaxed);
                    (v > 0).then(|| {
                        (
                            vec![
                                ("api", r.api.clone()),
                                ("route", r.route.clone()),
                                ("status", STATUS_LABELS[i].to_string()),
                            ],
                            v,
                        )
                    })
                })
            }),
        )?;
        histogram(
            &mut enc,
            "esb_gateway_request_duration",
            "Time from request to response head, by API and route.",
            self.routes.iter().map(|r| {
                (
                    vec![("api", r.api.clone()), ("route", r.route.clone())],
                    &r.latency,
                )
            }),
        )?;
        counter(
            &mut enc,
            "esb_service_operations",
            "Embedded S3 / DynamoDB operations by operation and status class.",
            self.services.iter().flat_map(|s| {
                let ops: Vec<_> = s
                    .ops
                    .read()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                ops.into_iter().flat_map(move |(op, c)| {
                    ["2xx", "4xx", "5xx"]
                        .into_iter()
                        .enumerate()
                        .filter_map(move |(i, class)| {
                            let v = c[i].load(Ordering::Relaxed);
                            (v > 0).then(|| {
                                (
                                    vec![
                                        ("service", s.service.to_string()),
                                        ("operation", op.clone()),
                                        ("status", class.to_string()),
                                    ],
                                    v,
                                )
                            })
                        })
                })
            }),
        )?;
        if let Some(rss) = self.process.rss_bytes {
            let family = enc.encode_descriptor(
                "process_resident_memory",
                "Resident memory of the esb process.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::try_from(rss).unwrap_or(i64::MAX)).encode(family)?;
        }
        if let Some(fds) = self.process.open_fds {
            gauge(
                &mut enc,
                "process_open_fds",
                "Open file descriptors of the esb process.",
                None,
                std::iter::once((Vec::new(), i64::try_from(fds).unwrap_or(i64::MAX))),
            )?;
        }
        Ok(())
    }
}
