//! Hot reload for `esb up`: a watcher (`notify`, inotify on Linux) on the
//! template, the functions' code folders and layers. After a change (and
//! 30 ms of quiet, so an editor's write-rename is one change) the template
//! is loaded again and every function's spec recomputed; a function whose
//! content code hash changed is registered again in the pool, which sends
//! new invocations to fresh workers while in-flight ones finish on the old
//! ones. A template that no longer loads keeps the running app and reports
//! the located error. Changed routes and APIs are swapped into the gateway
//! in one step after the functions are registered
//! ([`esb_gateway::GatewayState::replace`]): each request sees either the
//! old or the new route table, never a mix, and in-flight requests finish.
//! A worker whose init fails while an edit is being read (it may have
//! imported a half-written file) is retried once on the new code.
//! New buckets and tables are created and changed event sources (schedules,
//! S3 notifications, stream mappings, async settings) swapped in
//! ([`crate::live`]).
//!
//! Must not: print (it reports through the caller's callback).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use esb_config::Settings;

use crate::error::{AppError, Context};
use crate::functions::{WorkerContext, function_specs};

/// What a reload needs to rebuild the specs exactly as at start.
#[derive(Clone)]
pub struct Reloader {
    pub(crate) settings: Settings,
    pub(crate) data_dir: PathBuf,
    pub(crate) worker_url: String,
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) service_env: BTreeMap<String, String>,
    pub(crate) iam: Arc<esb_iam::Iam>,
    pub(crate) pool: esb_pool::Pool,
    pub(crate) routes: Arc<std::sync::Mutex<String>>,
    /// The served gateway, whose routes a reload replaces (`None`: routes
    /// are not reloaded, e.g. in tests).
    pub(crate) gateway: Option<esb_gateway::GatewayState>,
    /// The box's auth, which every gateway configuration carries.
    pub(crate) auth: Option<Arc<esb_auth::Auth>>,
    /// Buckets, tables and event sources (`None`: not reloaded, e.g. in
    /// tests).
    pub(crate) live: Option<Arc<crate::live::LiveResources>>,
}

/// One reload's outcome.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Functions registered again with new content.
    pub changed: Vec<String>,
    /// Functions (or routes) the running app cannot take without a restart,
    /// and the template's warnings.
    pub notes: Vec<String>,
}

impl Reloader {
    /// Loads the template again and registers every function whose spec
    /// changed. An error leaves the running app as it was.
    pub fn reload(&self) -> Result<Reloaded, AppError> {
        let loaded = crate::template::load_template(&self.settings)?;
        let ctx = WorkerContext {
            lambda_endpoint: &self.worker_url,
            ca_bundle: self.ca_cert.as_deref(),
            service_env: self.service_env.clone(),
            iam: Some(self.iam.clone()),
        };
        let set = function_specs(&loaded.app, &self.settings, &self.data_dir, &ctx)?;
        // The functions' policies as the template now says.
        let iam_warnings = crate::iam::load(&self.iam, &loaded.app);
        let mut out = Reloaded {
            notes: set.warnings,
            ..Default::default()
        };
        out.notes.extend(iam_warnings);
        for (spec, limits) in set.functions {
            match self.pool.function(&spec.name) {
                Some(old) if *old == spec => {}
                Some(_) => {
                    out.changed.push(spec.name.clone());
                    self.pool.register(spec, limits);
                }
                None => {
                    out.notes.push(format!("function {} is new", spec.name));
                    out.changed.push(spec.name.clone());
                    self.pool.register(spec, limits);
                }
            }
        }
        // New buckets and tables before the routes that may use them; event
        // sources after the functions they invoke are registered.
        if let Some(live) = &self.live {
            out.notes.extend(live.apply(&loaded.app));
        }
        let routes = route_key(&loaded.app);
        let mut current = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != routes {
            match (&self.gateway, &self.auth) {
                (Some(gateway), Some(auth)) => {
                    let config =
                        crate::gateway::gateway_config(&loaded.app, &self.settings, auth.clone());
                    out.notes.extend(config.warnings);
                    gateway.replace(config.config).map_err(|e| {
                        AppError::Refused(format!(
                            "the new routes cannot be served ({e}); still serving the previous ones"
                        ))
                    })?;
                    out.notes.push(format!(
                        "routes reloaded: {} route(s) in {} API(s)",
                        loaded.app.routes.len(),
                        loaded.app.apis.len()
                    ));
                }
                _ => out.notes.push(
                    "the template's routes or APIs changed: restart esb up to serve them"
                        .to_string(),
                ),
            }
            *current = routes;
        }
        Ok(out)
    }

    /// The folders to watch: the template's folder and every code folder
    /// and layer outside it.
    pub fn watch_roots(&self) -> Vec<PathBuf> {
        let template = absolute(&self.settings.template);
        let base = template
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut roots = vec![base.clone()];
        if let Ok(loaded) = crate::template::load_template(&self.settings) {
            for f in &loaded.app.functions {
                if let esb_template::FunctionCode::Zip { code_uri } = &f.code
                    && !code_uri.starts_with(&base)
                    && code_uri.exists()
                {
                    roots.push(code_uri.clone());
                }
            }
            for l in &loaded.app.layers {
                if let Some(esb_template::FunctionCode::Zip { code_uri }) = &l.content
                    && !code_uri.starts_with(&base)
                    && code_uri.exists()
                {
                    roots.push(code_uri.clone());
                }
            }
        }
        roots
    }

    /// Watches until the returned guard is dropped; `report` gets each
    /// reload's outcome (or its error).
    pub fn watch(
        self,
        report: impl Fn(Result<Reloaded, AppError>) + Send + 'static,
    ) -> Result<WatchGuard, AppError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let ignore = [absolute(&self.data_dir)];
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                let relevant = event.paths.iter().any(|p| {
                    !ignore.iter().any(|i| p.starts_with(i))
                        && !p.components().any(|c| {
                            let c = c.as_os_str();
                            c == "__pycache__" || c == ".git" || c == "node_modules"
                        })
                });
                if relevant {
                    let _ = tx.send(());
                }
            })
            .context(|| "cannot start the file watcher".into())?;
        for root in self.watch_roots() {
            watcher
                .watch(&root, RecursiveMode::Recursive)
                .context(|| format!("cannot watch {}", root.display()))?;
        }
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // From the first event until the new code is registered, a
                // worker whose init fails (it may have read a file the
                // editor was still writing) is retried on the new code
                // (esb_pool::Pool::code_changing).
                let editing = self.pool.code_changing();
                // Quiet period: one reload per burst of writes.
                while let Ok(Some(())) =
                    tokio::time::timeout(Duration::from_millis(30), rx.recv()).await
                {
                }
                let this = self.clone();
                let result = tokio::task::spawn_blocking(move || this.reload())
                    .await
                    .unwrap_or_else(|e| Err(AppError::Refused(format!("reload task failed: {e}"))));
                drop(editing);
                report(result);
            }
        });
        Ok(WatchGuard {
            _watcher: Box::new(watcher),
            task,
        })
    }
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchGuard {
    _watcher: Box<dyn Watcher + Send>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A fingerprint of the routes and APIs (a change needs a restart).
pub(crate) fn route_key(app: &esb_template::AppModel) -> String {
    serde_json::to_string(&(&app.apis, &app.routes)).unwrap_or_default()
}
