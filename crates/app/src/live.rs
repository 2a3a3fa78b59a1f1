//! What a template reload applies besides functions and routes: the
//! template's new buckets and tables are created, and its event sources —
//! schedules (`Schedule`, `ScheduleV2`, `AWS::Events::Rule`,
//! `AWS::Scheduler::Schedule`), S3 bucket notifications, DynamoDB stream
//! mappings and each function's asynchronous settings (`EventInvokeConfig`,
//! `DeadLetterQueue`) — are swapped for the new ones.
//!
//! Each part is compared with what runs (a fingerprint of its part of the
//! model) and only a changed part is touched: schedules are replaced in the
//! running scheduler (rates keep their phase); the S3 endpoint always has
//! one [`SwapHook`], whose rules are replaced in one step; changed stream
//! pollers are stopped and started again from their checkpoints (a batch cut
//! short is delivered again, as after a restart). Removed buckets and tables
//! are kept with their data, as `esb up` never deletes user data.
//!
//! Must not: print (it returns notes for the caller).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use esb_config::Settings;
use esb_events::EventQueue;
use esb_events::schedule::Scheduler;

/// The S3 endpoint's write hook, whose notification rules a reload swaps.
#[derive(Default)]
pub struct SwapHook {
    inner: RwLock<Option<Arc<dyn esb_services_s3::WriteHook>>>,
}

impl SwapHook {
    /// A hook that forwards to `inner` (none: no bucket notifies).
    pub fn new(inner: Option<Arc<dyn esb_services_s3::WriteHook>>) -> Self {
        Self {
            inner: RwLock::new(inner),
        }
    }

    fn set(&self, inner: Option<Arc<dyn esb_services_s3::WriteHook>>) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = inner;
    }

    fn current(&self) -> Option<Arc<dyn esb_services_s3::WriteHook>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl esb_services_s3::WriteHook for SwapHook {
    fn watches(&self, bucket: &str) -> bool {
        self.current().is_some_and(|h| h.watches(bucket))
    }

    async fn written(&self, write: esb_services_s3::ObjectWrite) {
        if let Some(h) = self.current() {
            h.written(write).await;
        }
    }
}

/// The running resources and event sources a reload may change.
pub struct LiveResources {
    pub(crate) settings: Settings,
    pub(crate) data_dir: PathBuf,
    /// `<data dir>/s3` when the embedded S3 runs.
    pub(crate) s3_root: Option<PathBuf>,
    /// The embedded DynamoDB's database when it runs.
    pub(crate) db: Option<dynoxide::Database>,
    pub(crate) queue: Arc<EventQueue>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) hook: Arc<SwapHook>,
    pub(crate) stream_invoker: Arc<dyn esb_events::Invoker>,
    pub(crate) streams: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub(crate) keys: Mutex<Keys>,
}

/// Fingerprints of what runs.
#[derive(Default, PartialEq, Eq)]
pub(crate) struct Keys {
    resources: String,
    schedules: String,
    notifications: String,
    streams: String,
    async_configs: String,
}

impl Keys {
    pub(crate) fn of(app: &esb_template::AppModel) -> Self {
        let names: Vec<_> = app
            .functions
            .iter()
            .map(|f| (&f.logical_id, &f.name))
            .collect();
        let buckets: Vec<_> = app.buckets.iter().map(|b| &b.name).collect();
        let streams: Vec<_> = app
            .functions
            .iter()
            .map(|f| {
                (
                    &f.name,
                    f.events
                        .iter()
                        .filter(|e| e.kind == "DynamoDB")
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let configs: Vec<_> = app
            .functions
            .iter()
            .map(|f| (&f.name, &f.event_invoke_config, &f.dead_letter_queue))
            .collect();
        Keys {
            resources: json(&(&buckets, &app.tables)),
            schedules: json(&(&app.schedules, &names)),
            notifications: json(&(&app.buckets, &names)),
            streams: json(&(&streams, &app.tables)),
            async_configs: json(&configs),
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl LiveResources {
    /// Applies `app`'s buckets, tables and event sources where they differ
    /// from what runs. Returns notes for the user (what changed, warnings).
    pub fn apply(&self, app: &esb_template::AppModel) -> Vec<String> {
        let mut notes = Vec::new();
        let new = Keys::of(app);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if new.resources != keys.resources {
            self.create_resources(app, &mut notes);
        }
        if new.async_configs != keys.async_configs {
            let (configs, warnings) = crate::events::invoke_configs(app);
            for (name, config) in configs {
                self.queue
                    .set_invoke_config(&name, config.unwrap_or_default());
            }
            notes.extend(warnings);
            notes.push("asynchronous invocation settings reloaded".into());
        }
        if new.schedules != keys.schedules {
            let (list, warnings) = crate::events::schedules(app);
            notes.push(format!("schedules reloaded: {} schedule(s)", list.len()));
            self.scheduler.replace(list);
            notes.extend(warnings);
        }
        if new.notifications != keys.notifications {
            let (hook, warnings) = crate::events::s3_hook(app, &self.settings, self.queue.clone());
            notes.push(format!(
                "S3 notifications reloaded{}",
                if hook.is_none() { ": none" } else { "" }
            ));
            self.hook.set(hook);
            notes.extend(warnings);
        }
        if new.streams != keys.streams {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            for s in streams.drain(..) {
                s.abort();
            }
            let (handles, warnings) = crate::events::start_stream_pollers(
                app,
                &self.settings,
                &self.data_dir,
                self.db.as_ref(),
                self.stream_invoker.clone(),
            );
            notes.push(format!(
                "DynamoDB stream mappings reloaded: {} poller(s)",
                handles.len()
            ));
            *streams = handles;
            notes.extend(warnings);
        }
        *keys = new;
        notes
    }

    fn create_resources(&self, app: &esb_template::AppModel, notes: &mut Vec<String>) {
        if let Some(root) = &self.s3_root {
            let names: Vec<String> = app.buckets.iter().map(|b| b.name.clone()).collect();
            match esb_services_s3::ensure_buckets(root, &names) {
                Ok(created) => {
                    notes.extend(created.into_iter().map(|n| format!("bucket {n} created")))
                }
                Err(e) => notes.push(format!(
                    "warning: cannot create the template's buckets: {e}"
                )),
            }
        }
        if let Some(db) = &self.db {
            let specs: Vec<_> = app.tables.iter().map(crate::services::table_spec).collect();
            match esb_services_dynamodb::ensure_tables(db, &specs) {
                Ok(created) => {
                    notes.extend(created.into_iter().map(|n| format!("table {n} created")))
                }
                Err(e) => notes.push(format!("warning: cannot create the template's tables: {e}")),
            }
        }
    }

    /// Stops the stream pollers (shutdown).
    pub fn stop(&self) {
        for s in self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            s.abort();
        }
    }
}
