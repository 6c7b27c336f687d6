//! `foodclip serve`: a warm model behind an HTTP API and a web page, for the camera over the
//! tray-return belt and for kitchen software.
//!
//! - `POST /v1/classify`: a photo's bytes (or a multipart form of `image` fields) in, the
//!   records `classify --format json` writes out, without the path;
//! - `POST /v1/embed`: the image embeddings, as `embed` writes them;
//! - `GET /v1/labels`: the classes, groups and model; `GET /healthz`: ready or loading;
//! - `GET /`: a self-contained page to drop photos on.
//!
//! The model loads on its own thread while the server already answers (`/healthz` says
//! "loading"). Requests are decoded on the rayon pool, then share model calls through the
//! [`batcher`]; the queue is bounded. Ctrl-C or SIGTERM finishes the requests in flight, then
//! [`run`] returns.

mod api;
pub mod batcher;

use crate::checkpoint::Checkpoint;
use crate::classify::{embed_pictures, Classifier};
use crate::labels::LabelSet;
use crate::preprocess::{Fidelity, PreprocessConfig};
use crate::regions::Regions;
use anyhow::{Context as _, Result};
use batcher::{Batcher, ModelFn, Output};
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Required as `Authorization: Bearer TOKEN` on every `/v1` route.
    pub token: Option<String>,
    /// Largest request body, in bytes (larger ones get 413).
    pub max_body: usize,
    /// Most photos admitted at once (decoding or waiting for the model); beyond it, 503.
    pub max_queue: usize,
    /// Most pictures per model call.
    pub batch_size: usize,
    /// How long a model call may wait for photos still being decoded.
    pub batch_wait: Duration,
    /// Pixel cap per photo (decompression bombs).
    pub max_pixels: u64,
    /// Exact or fast preprocessing.
    pub fidelity: Fidelity,
    /// Regions applied to every photo unless a request gives its own (a layout, a grid).
    pub regions: Option<Regions>,
    /// Which pages on other origins may call the API from a browser.
    pub cors: Cors,
    /// The forecaster behind `POST /v1/forecast`, when the server was given a history.
    pub forecast: Option<Arc<crate::forecast::Service>>,
}

/// Which browser pages on other origins may call the API (CORS). The server's own page needs
/// none of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Cors {
    /// None: browsers keep other origins' pages from reading the answers.
    #[default]
    SameOrigin,
    /// Pages from any origin.
    Any,
    /// Pages from these origins (`scheme://host[:port]`).
    Origins(Vec<String>),
}

impl Cors {
    /// From `--cors-origin` values: `*` for any origin, else each an origin such as
    /// `http://kitchen.local:3000`.
    ///
    /// ```
    /// use foodclip::serve::Cors;
    /// assert_eq!(Cors::parse(&[]).unwrap(), Cors::SameOrigin);
    /// assert_eq!(Cors::parse(&["*".into()]).unwrap(), Cors::Any);
    /// let one = Cors::parse(&["https://kitchen.local:3000/".into()]).unwrap();
    /// assert_eq!(one, Cors::Origins(vec!["https://kitchen.local:3000".into()]));
    /// assert!(Cors::parse(&["kitchen.local/page".into()]).is_err());
    /// ```
    pub fn parse(origins: &[String]) -> Result<Self> {
        if origins.iter().any(|o| o.trim() == "*") {
            return Ok(Self::Any);
        }
        if origins.is_empty() {
            return Ok(Self::SameOrigin);
        }
        let checked = origins.iter().map(|o| {
            let origin = o.trim().trim_end_matches('/');
            let host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            let plain = |c: char| c.is_ascii_alphanumeric() || "-.:[]".contains(c);
            match host {
                Some(h) if !h.is_empty() && h.chars().all(plain) => Ok(origin.to_string()),
                _ => anyhow::bail!(
                    "--cors-origin {o}: give an origin such as http://kitchen.local:3000 \
                     (scheme, host and port, no path), or * for any"
                ),
            }
        });
        Ok(Self::Origins(checked.collect::<Result<_>>()?))
    }
}

/// The model and classes the server answers with, once loaded.
pub struct Engine {
    /// The model (shared with `--regions auto`'s finder).
    pub ckpt: Arc<Checkpoint>,
    /// The classes' embeddings (and an adapter's cache).
    pub classifier: Classifier,
    /// The classes, for `/v1/labels` and `group_scores`.
    pub labels: LabelSet,
    /// The adapter's file name, when one is used.
    pub adapter: Option<String>,
    /// `--regions auto`'s finder, when the server finds dishes itself.
    pub finder: Option<Arc<dyn crate::regions::auto::Finder>>,
}

/// What the handlers use once the model is loaded.
struct Ready {
    batcher: Batcher,
    preprocess: PreprocessConfig,
    /// The body of `/v1/labels`.
    labels: Value,
    /// The model's identity.
    model: String,
    has_groups: bool,
    /// The server's regions (`--layout`, `--grid`, `--regions auto` with its finder bound).
    regions: Option<Regions>,
}

impl Ready {
    /// Moves the model onto its thread.
    fn new(engine: Engine, options: &Options) -> Self {
        let Engine {
            ckpt,
            classifier,
            labels,
            adapter,
            finder,
        } = engine;
        let mut regions = options.regions.clone();
        if let (Some(r), Some(f)) = (regions.as_mut(), finder) {
            r.bind(f);
        }
        let groups: Vec<&str> = labels.groups.iter().map(|g| g.display()).collect();
        let classes: Vec<Value> = labels
            .classes
            .iter()
            .map(|c| {
                let mut class = json!({"label": c.display(), "names": c.names});
                if let Some(g) = c.group {
                    class["group"] = json!(labels.groups[g].display());
                }
                class
            })
            .collect();
        let labels_json = json!({
            "model": ckpt.identity,
            "precision": ckpt.precision.to_string(),
            "adapter": adapter,
            "classes": classes,
            "groups": groups,
        });
        let preprocess = ckpt.preprocess.clone();
        let model = ckpt.identity.clone();
        let run: ModelFn = Box::new(move |pictures, rank| {
            let emb = embed_pictures(&ckpt, pictures)?;
            let rankings = if rank {
                classifier.predict(&emb)?
            } else {
                Vec::new()
            };
            Ok(Output {
                embeddings: emb.to_vec2::<f32>()?,
                rankings,
            })
        });
        Self {
            batcher: Batcher::start(
                run,
                options.batch_size,
                options.batch_wait,
                options.max_queue,
            ),
            preprocess,
            labels: labels_json,
            model,
            has_groups: !labels.groups.is_empty(),
            regions,
        }
    }
}

/// The server's state, shared by every request.
struct AppState {
    options: Options,
    /// The hash of the token, compared in constant time.
    token: Option<blake3::Hash>,
    ready: OnceLock<Arc<Ready>>,
    /// Where the events and the access log go, a line each.
    log: Log,
}

/// A sink for the server's log lines.
type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// Serves on `listener` until Ctrl-C or SIGTERM, then finishes the requests in flight and
/// returns. `load` runs on a thread of its own while the server already answers (`/healthz`
/// says "loading", the API 503); its error ends the server and is returned. `log` gets one
/// line per event (ready, stopping) and per request answered (an access log).
pub fn run(
    listener: std::net::TcpListener,
    options: Options,
    load: impl FnOnce() -> Result<Engine> + Send,
    log: impl Fn(&str) + Send + Sync + 'static,
) -> Result<()> {
    listener
        .set_nonblocking(true)
        .context("cannot set up the listening socket")?;
    let log: Log = Arc::new(log);
    let state = Arc::new(AppState {
        token: options.token.as_deref().map(|t| blake3::hash(t.as_bytes())),
        options,
        ready: OnceLock::new(),
        log: log.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
        .thread_name("foodclip-http")
        .enable_all()
        .build()
        .context("cannot start the server's threads")?;
    let (loaded, on_loaded) = tokio::sync::oneshot::channel::<Result<Ready>>();
    std::thread::scope(|scope| {
        let state_for_load = state.clone();
        scope.spawn(move || {
            let result = load().map(|engine| Ready::new(engine, &state_for_load.options));
            let _ = loaded.send(result);
        });
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener)
                .context("cannot listen on the socket")?;
            let failure = Arc::new(std::sync::Mutex::new(None));
            let (failed, for_stop) = (failure.clone(), state.clone());
            let stop = async move {
                match on_loaded.await {
                    Ok(Ok(ready)) => {
                        // Until the model is ready, Ctrl-C and SIGTERM end the process at once:
                        // there is nothing in flight to finish. From here on they stop the
                        // server; `/healthz` says ready only once they do.
                        let stop = StopSignals::listen();
                        log(&format!(
                            "ready: {} classes, model {}",
                            ready.labels["classes"].as_array().map_or(0, Vec::len),
                            ready.model
                        ));
                        let _ = for_stop.ready.set(Arc::new(ready));
                        stop.recv().await;
                        log("stopping: finishing the requests in flight");
                    }
                    Ok(Err(e)) => *failed.lock().expect("not poisoned") = Some(e),
                    Err(_) => {}
                }
            };
            let app = api::router(state.clone())
                .into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
                .context("the server failed")?;
            let failed = failure.lock().expect("not poisoned").take();
            failed.map_or(Ok(()), Err)
        })
    })
}

/// Ctrl-C and SIGTERM, caught from the moment [`StopSignals::listen`] returns.
struct StopSignals {
    #[cfg(unix)]
    signals: Option<[tokio::signal::unix::Signal; 2]>,
}

impl StopSignals {
    /// Starts catching the signals (within the runtime).
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let interrupt = signal(SignalKind::interrupt());
            let terminate = signal(SignalKind::terminate());
            Self {
                signals: interrupt.and_then(|i| Ok([i, terminate?])).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the first of them.
    async fn recv(self) {
        #[cfg(unix)]
        if let Some([mut interrupt, mut terminate]) = self.signals {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
