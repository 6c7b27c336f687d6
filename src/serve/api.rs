//! The routes: reading a request's photos, handing them to the decoder pool and the batcher,
//! and writing the records; errors as `{"error": "..."}` with the right status. Each request
//! answered is one line of the log (successful `/healthz` probes aside):
//!
//! ```text
//! 127.0.0.1:51234 POST /v1/classify 200 68 ms
//! 127.0.0.1:51240 POST /v1/classify 422 0 ms: not an image foodclip can read (JPEG, PNG, ...)
//! ```

use super::{AppState, Cors, Ready};
use crate::classify::{OpenSet, Shown};
use crate::output::{JsonRecord, Origin};
use crate::regions::{pieces, Photo, Piece, Region, Regions};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The page at `/`.
const PAGE: &str = include_str!("page.html");

/// The routes, with the token check on `/v1`, the body limit, panics turned into 500s, and the
/// access log around them all.
pub(super) fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/classify", post(classify))
        .route("/v1/embed", post(embed))
        .route("/v1/leftovers", post(leftovers))
        .route("/v1/forecast", post(forecast))
        .route("/v1/labels", get(labels))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let app = Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .merge(v1)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.options.max_body))
        .layer(middleware::from_fn_with_state(state.clone(), limit_body))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }));
    let app = match cors(&state.options.cors) {
        Some(layer) => app.layer(layer),
        None => app,
    };
    app.layer(middleware::from_fn_with_state(state.clone(), access_log))
        .with_state(state)
}

/// The CORS headers for pages on other origins, when any may call: preflights are answered
/// before the token is checked, and every answer (errors too) says who may read it.
fn cors(cors: &Cors) -> Option<CorsLayer> {
    let origins = match cors {
        Cors::SameOrigin => return None,
        Cors::Any => AllowOrigin::any(),
        Cors::Origins(list) => AllowOrigin::list(
            list.iter()
                .map(|o| HeaderValue::from_str(o).expect("checked by Cors::parse")),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// Logs a line per request once its answer is ready: the client's address, method, path,
/// status, time taken, and an error's message. Successful `/healthz` probes are left out.
async fn access_log(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_string(), |c| c.0.to_string());
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(200).collect();
    let response = next.run(req).await;
    let status = response.status();
    if path != "/healthz" || !status.is_success() {
        let ms = start.elapsed().as_millis();
        let mut line = format!("{peer} {method} {path} {} {ms} ms", status.as_u16());
        if let Some(Refused(message)) = response.extensions().get() {
            // A reason may quote the request (a query's field, a form's file name): control
            // characters are escaped, so that a line is one request.
            line.push_str(": ");
            for c in message.chars() {
                match c.is_control() {
                    true => line.extend(c.escape_default()),
                    false => line.push(c),
                }
            }
        }
        (state.log)(&line);
    }
    response
}

/// An [`ApiError`]'s message, kept on its response for the access log.
#[derive(Clone)]
struct Refused(Arc<str>);

/// An answer that is not a result: a status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for `Retry-After` (503).
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 503: come back in `seconds`.
    fn unavailable(message: &str, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, json_body(&json!({"error": self.message}))).into_response();
        response
            .extensions_mut()
            .insert(Refused(self.message.into()));
        let headers = response.headers_mut();
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body with its content type.
fn json_body(value: &impl serde::Serialize) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).expect("records serialise"),
    )
}

/// Refuses `/v1` requests without the token (when one is set), comparing hashes so that the
/// time taken says nothing about the token.
async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // `blake3::Hash` compares in constant time.
        if blake3::hash(given.trim().as_bytes()) != *token {
            let message = "missing or wrong token: send Authorization: Bearer TOKEN";
            let error = ApiError::new(StatusCode::UNAUTHORIZED, message);
            return refuse(req, state.options.max_body, error)
                .await
                .into_response();
        }
    }
    next.run(req).await
}

/// Refuses a body whose announced length is over `--max-body` before reading it; longer
/// bodies without a length stop where they cross it (see [`read_uploads`]).
async fn limit_body(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let max = state.options.max_body;
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = length.filter(|&n| n > max as u64) {
        return too_large(n, max).into_response();
    }
    next.run(req).await
}

/// Refuses `req` before its body is read: what the client sends of the body (up to `max`
/// bytes, for at most two seconds) is read and dropped first, so that it gets the answer rather
/// than a connection reset while it is still sending.
async fn refuse(req: Request, max: usize, error: ApiError) -> ApiError {
    use http_body_util::BodyExt;
    let mut body = req.into_body();
    let drain = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > max {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
    error
}

/// How long a refused request's body is read and dropped before the refusal is sent.
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(2);

fn too_large(length: u64, max: usize) -> ApiError {
    let length = if length > 0 {
        format!("{length} bytes")
    } else {
        "too large".to_string()
    };
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is {length}, over the server's limit of {max} bytes (--max-body)"),
    )
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src blob: data:; connect-src 'self'",
            ),
        ],
        PAGE,
    )
}

async fn not_found(State(state): State<Arc<AppState>>, req: Request) -> ApiError {
    let message = format!(
        "no route {} {}: the API is POST /v1/classify, POST /v1/embed, POST /v1/leftovers, GET /v1/labels, GET /healthz",
        req.method(),
        req.uri().path()
    );
    let error = ApiError::new(StatusCode::NOT_FOUND, message);
    refuse(req, state.options.max_body, error).await
}

/// Ready (200) or still loading the model (503), with the counters.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let Some(ready) = state.ready.get() else {
        let body = json_body(&json!({"status": "loading"}));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    };
    let c = ready.batcher.counters();
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    json_body(&json!({
        "status": "ready",
        "model": ready.model,
        "photos": load(&c.photos),
        "pictures": load(&c.pictures),
        "model_calls": load(&c.model_calls),
        "waiting": ready.batcher.waiting(),
    }))
    .into_response()
}

async fn labels(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    Ok(json_body(&loaded(&state)?.labels).into_response())
}

/// The loaded model, or 503 while it loads.
fn loaded(state: &AppState) -> Result<Arc<Ready>, ApiError> {
    state
        .ready
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("the model is still loading", 5))
}

/// The query of `/v1/classify` (`/v1/embed` takes `regions` only).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    top_k: Option<usize>,
    group_scores: Option<bool>,
    threshold: Option<f32>,
    min_margin: Option<f32>,
    /// A JSON array of boxes.
    regions: Option<String>,
}

/// A photo of a request, with the form field's file name.
struct Upload {
    file: Option<String>,
    bytes: Bytes,
}

/// A request's photos, each cut into its pieces, and the model's answer for the pictures.
struct Answered {
    photos: Vec<(Option<String>, Vec<Piece>)>,
    output: super::batcher::Output,
}

/// Reads the query: what a classify record shows, and the regions to cut (the request's,
/// else the server's).
fn parse_query(
    req: &Request,
    ready: &Ready,
    rank: bool,
) -> Result<(Shown, Option<Arc<Regions>>), ApiError> {
    let Query(params) = Query::<Params>::try_from_uri(req.uri())
        .map_err(|e| ApiError::bad(format!("bad query: {}", e.body_text())))?;
    if !rank
        && (params.top_k.is_some()
            || params.group_scores.is_some()
            || params.threshold.is_some()
            || params.min_margin.is_some())
    {
        return Err(ApiError::bad(
            "top_k, group_scores, threshold and min_margin are for /v1/classify; /v1/embed takes regions",
        ));
    }
    let group_scores = params.group_scores.unwrap_or(false);
    if group_scores && !ready.has_groups {
        return Err(ApiError::bad(
            "group_scores: the server's label file has no [group] header lines",
        ));
    }
    let shown = Shown {
        open_set: OpenSet::new(params.threshold, params.min_margin).map_err(ApiError::bad)?,
        top_k: params.top_k.unwrap_or(5),
        group_scores,
    };
    let regions = match &params.regions {
        Some(text) => Some(Arc::new(
            Regions::boxes(text).map_err(|e| ApiError::bad(format!("regions: {e:#}")))?,
        )),
        None => ready.regions.clone().map(Arc::new),
    };
    Ok((shown, regions))
}

/// Reads the photos of `req` (its body, or the `image` fields of its form), decodes them on
/// the worker pool and runs their pictures through the batcher. The queue's place is held
/// from before the body is read until the answer.
async fn answer(state: &AppState, req: Request, rank: bool) -> Result<(Shown, Answered), ApiError> {
    let busy = || ApiError::unavailable("the queue is full; try again shortly", 1);
    let checked = loaded(state).and_then(|ready| {
        let (shown, regions) = parse_query(&req, &ready, rank)?;
        let ticket = ready.batcher.admit(1).ok_or_else(busy)?;
        Ok((ready, shown, regions, ticket))
    });
    let (ready, shown, regions, ticket) = match checked {
        Ok(c) => c,
        Err(e) => return Err(refuse(req, state.options.max_body, e).await),
    };
    let mut tickets = vec![ticket];
    let uploads = read_uploads(req, state.options.max_body, |n| {
        if n > tickets.len() {
            tickets.push(ready.batcher.admit(1).ok_or_else(busy)?);
        }
        Ok(())
    })
    .await?;
    let (max_pixels, fidelity) = (state.options.max_pixels, state.options.fidelity);
    let for_pool = ready.clone();
    let mut photos = on_pool(move || {
        uploads
            .par_iter()
            .map(|u| {
                let photo = Photo::Bytes(&u.bytes);
                let pre = &for_pool.preprocess;
                let pieces = pieces(regions.as_deref(), pre, photo, max_pixels, fidelity);
                (u.file.clone(), pieces)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    if photos.iter().all(|(_, p)| failed_whole(p)) {
        let (file, pieces) = &photos[0];
        let error = pieces[0].picture.as_ref().expect_err("failed");
        let message = match file {
            Some(f) => format!("{f}: {error}"),
            None => error.clone(),
        };
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message));
    }
    let pictures = take_pictures(photos.iter_mut().flat_map(|(_, p)| p.iter_mut()));
    let output = ready
        .batcher
        .run(pictures, rank, &mut tickets)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    drop(tickets);
    Ok((shown, Answered { photos, output }))
}

/// Runs `work` on the decoder pool; a panic in it is a 500.
async fn on_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    });
    let internal = |m: &str| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m);
    rx.await
        .map_err(|_| internal("decoding stopped"))?
        .map_err(|_| internal("internal error while decoding"))
}

/// The pictures of `pieces` taken out for the model, in order (a failed piece has none).
fn take_pictures<'a>(pieces: impl Iterator<Item = &'a mut Piece>) -> Vec<image::RgbImage> {
    pieces
        .filter_map(|p| p.picture.as_mut().ok().map(std::mem::take))
        .collect()
}

/// Whether a photo failed as a whole (it could not be read), not region by region.
fn failed_whole(pieces: &[Piece]) -> bool {
    matches!(
        pieces,
        [Piece {
            region: None,
            picture: Err(_),
            ..
        }]
    )
}

/// The photos of a request: the `image` fields of a multipart form, else the body itself.
/// `admit(n)` is called as the n-th photo is met, to hold its place in the queue.
async fn read_uploads(
    req: Request,
    max_body: usize,
    admit: impl FnMut(usize) -> Result<(), ApiError>,
) -> Result<Vec<Upload>, ApiError> {
    let fields = read_form(req, max_body, &["image"], admit).await?;
    Ok(fields.into_iter().map(|(_, u)| u).collect())
}

/// The fields named in `names` of a multipart form with their names, in the form's order (a
/// body that is no form is one `image`). `admit(n)` is called as the n-th is met.
async fn read_form(
    req: Request,
    max_body: usize,
    names: &[&str],
    mut admit: impl FnMut(usize) -> Result<(), ApiError>,
) -> Result<Vec<(String, Upload)>, ApiError> {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("multipart/form-data"));
    if !is_form {
        let bytes = axum::body::to_bytes(req.into_body(), max_body)
            .await
            .map_err(|e| body_error(&e, max_body))?;
        if bytes.is_empty() {
            return Err(ApiError::bad(
                "the body is empty: send a photo's bytes, or a multipart/form-data form with image fields",
            ));
        }
        return Ok(vec![("image".to_string(), Upload { file: None, bytes })]);
    }
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad(format!("bad form: {}", e.body_text())))?;
    let mut uploads = Vec::new();
    loop {
        let field = form.next_field().await.map_err(|e| {
            ApiError::new(
                e.status(),
                format!("cannot read the form: {}", e.body_text()),
            )
        })?;
        let Some(field) = field else { break };
        let Some(name) = field
            .name()
            .filter(|n| names.contains(n))
            .map(str::to_string)
        else {
            continue;
        };
        if let Err(e) = admit(uploads.len() + 1) {
            // As in [`refuse`]: the rest of the form (its length bounded by `--max-body`) is
            // read and dropped, so that a client still sending it reads the refusal.
            drop(field);
            let rest = async { while let Ok(Some(_)) = form.next_field().await {} };
            let _ = tokio::time::timeout(DRAIN_FOR, rest).await;
            return Err(e);
        }
        let file = field.file_name().map(str::to_string);
        let bytes = field.bytes().await.map_err(|e| {
            ApiError::new(
                e.status(),
                format!("cannot read the form: {}", e.body_text()),
            )
        })?;
        uploads.push((name, Upload { file, bytes }));
    }
    if uploads.is_empty() {
        let (last, rest) = names.split_last().expect("a form names its fields");
        let fields = match rest {
            [] => last.to_string(),
            _ => format!("{}, or {last}", rest.join(", ")),
        };
        return Err(ApiError::bad(format!(
            "the form has no {fields} field: send each photo as a field of that name \
             (curl -F {}=@photo.jpg)",
            names[0]
        )));
    }
    Ok(uploads)
}

/// A body that could not be read: over the limit (413), or cut off.
fn body_error(e: &axum::Error, max_body: usize) -> ApiError {
    let over =
        std::error::Error::source(e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
    if over {
        too_large(0, max_body)
    } else {
        ApiError::bad(format!("cannot read the body: {e}"))
    }
}

/// Each piece of each photo of `answered`, in order: its origin, region, and its row made by
/// `row` (from the model's output, in the pictures' order) or its error.
fn results<T>(
    answered: &Answered,
    mut rows: impl Iterator<Item = T>,
) -> Vec<(Origin<'_>, Option<&Region>, Result<T, String>)> {
    let mut out = Vec::new();
    for (file, pieces) in &answered.photos {
        for piece in pieces {
            let result = match &piece.picture {
                Ok(_) => Ok(rows.next().expect("one row per picture")),
                Err(e) => Err(e.clone()),
            };
            out.push((
                Origin::Upload(file.as_deref()),
                piece.region.as_ref(),
                result,
            ));
        }
    }
    out
}

async fn classify(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let (shown, mut answered) = answer(&state, req, true).await?;
    let rankings = std::mem::take(&mut answered.output.rankings);
    let rows = rankings.into_iter().map(|mut r| {
        shown.apply(&mut r);
        r
    });
    let results = results(&answered, rows);
    let records: Vec<JsonRecord> = results
        .iter()
        .map(|(origin, region, r)| JsonRecord::predictions(*origin, *region, r))
        .collect();
    Ok(json_body(&records).into_response())
}

async fn embed(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let (_, mut answered) = answer(&state, req, false).await?;
    let embeddings = std::mem::take(&mut answered.output.embeddings);
    let results = results(&answered, embeddings.into_iter());
    let records: Vec<JsonRecord> = results
        .iter()
        .map(|(origin, region, r)| JsonRecord::embedding(*origin, *region, r))
        .collect();
    Ok(json_body(&records).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A request whose body comes in `chunks` of `size` bytes, with no length announced.
    fn streamed(chunks: usize, size: usize) -> Request {
        let stream = futures_util::stream::iter(
            (0..chunks).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![7u8; size]))),
        );
        Request::builder()
            .method("POST")
            .uri("/v1/classify")
            .header(header::CONTENT_TYPE, "image/jpeg")
            .body(axum::body::Body::from_stream(stream))
            .unwrap()
    }

    /// The router over a fake model that embeds a picture as its mean red value and panics on
    /// pure red pictures; returns the base URL (the server runs on `rt`, logging to `log`).
    fn fake_server(rt: &tokio::runtime::Runtime, log: super::super::Log) -> String {
        use super::super::batcher::{Batcher, Output};
        use super::super::{AppState, Options, Ready};
        let model: super::super::batcher::ModelFn = Box::new(|pictures, _| {
            let embeddings = pictures
                .iter()
                .map(|p| {
                    let red = p.pixels().map(|px| px.0[0] as f32).sum::<f32>();
                    assert!(red < 255.0 * p.len() as f32 / 3.0, "a model bug");
                    vec![red]
                })
                .collect();
            Ok(Output {
                embeddings,
                rankings: Vec::new(),
            })
        });
        let options = Options {
            token: None,
            max_body: 1 << 20,
            max_queue: 8,
            batch_size: 4,
            batch_wait: std::time::Duration::ZERO,
            max_pixels: 1 << 20,
            fidelity: crate::preprocess::Fidelity::Exact,
            regions: None,
            cors: super::super::Cors::SameOrigin,
            forecast: None,
        };
        let ready = Ready {
            batcher: Batcher::start(model, 4, std::time::Duration::ZERO, 8),
            preprocess: crate::preprocess::PreprocessConfig::default(),
            labels: json!({}),
            model: "fake".into(),
            has_groups: false,
            regions: None,
        };
        let state = Arc::new(AppState {
            options,
            token: None,
            ready: std::sync::OnceLock::from(Arc::new(ready)),
            log,
        });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        rt.spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn png(colour: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(40, 30, image::Rgb(colour));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_panic_in_the_model_is_that_requests_500_and_the_server_goes_on() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let kept = lines.clone();
        let url = fake_server(&rt, Arc::new(move |l| kept.lock().unwrap().push(l.into())));
        let post = |body: Vec<u8>| match ureq::post(&format!("{url}/v1/embed")).send_bytes(&body) {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        };
        let (status, body) = post(png([255, 0, 0]));
        assert_eq!(status, 500, "{body}");
        assert!(body.contains("internal error"), "{body}");
        let (status, body) = post(png([10, 200, 30]));
        assert_eq!(status, 200, "{body}");
        let records: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(records[0]["embedding"][0], 10.0 * 224.0 * 224.0);
        // The access log: a line per request, the failure's with its message.
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let fields = |l: &str| l.split(' ').take(4).skip(1).collect::<Vec<_>>().join(" ");
        assert!(lines[0].starts_with("127.0.0.1:"), "{lines:?}");
        assert_eq!(fields(&lines[0]), "POST /v1/embed 500", "{lines:?}");
        assert!(lines[0].contains(" ms: the model failed"), "{lines:?}");
        assert_eq!(fields(&lines[1]), "POST /v1/embed 200", "{lines:?}");
        assert!(lines[1].ends_with(" ms"), "{lines:?}");
    }

    #[test]
    fn a_body_without_a_length_stops_at_the_limit() {
        let over = block_on(read_uploads(streamed(20, 100_000), 1_000_000, |_| Ok(())));
        let e = over.err().expect("over the limit");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.contains("--max-body"), "{}", e.message);
        let under = block_on(read_uploads(streamed(5, 100_000), 1_000_000, |_| Ok(())));
        let uploads = under.expect("under the limit");
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0].bytes.len(), 500_000);
    }
}

/// The query of `/v1/leftovers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeftoverParams {
    threshold: Option<f32>,
    /// A JSON array of boxes (else the server's regions, else the whole photo).
    regions: Option<String>,
    /// `false` to skip registration.
    align: Option<bool>,
    /// The tray's name and day for the records.
    tray: Option<String>,
    date: Option<String>,
}

/// `POST /v1/leftovers`: a form with a `served` and a `returned` photo (and optionally the
/// `empty` tray) gives the records `foodclip leftovers` gives for that tray.
async fn leftovers(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    use crate::leftovers::records::{Recorder, Tray};
    use crate::leftovers::{examine_photos, EmptyTray, Settings, Shot};
    let busy = || ApiError::unavailable("the queue is full; try again shortly", 1);
    let checked = loaded(&state).and_then(|ready| {
        let Query(p) = Query::<LeftoverParams>::try_from_uri(req.uri())
            .map_err(|e| ApiError::bad(format!("bad query: {}", e.body_text())))?;
        let open_set = OpenSet::new(p.threshold, None).map_err(ApiError::bad)?;
        if let Some(d) = &p.date {
            crate::leftovers::pairs::check_day(d).map_err(ApiError::bad)?;
        }
        let regions = match &p.regions {
            Some(text) => {
                Regions::boxes(text).map_err(|e| ApiError::bad(format!("regions: {e:#}")))?
            }
            None => ready
                .regions
                .clone()
                .unwrap_or_else(|| Regions::grid(crate::regions::Grid { rows: 1, cols: 1 })),
        };
        let ticket = ready.batcher.admit(1).ok_or_else(busy)?;
        Ok((ready, p, open_set, regions, ticket))
    });
    let (ready, params, open_set, regions, ticket) = match checked {
        Ok(c) => c,
        Err(e) => return Err(refuse(req, state.options.max_body, e).await),
    };
    let mut tickets = vec![ticket];
    let fields = read_form(
        req,
        state.options.max_body,
        &["served", "returned", "empty"],
        |_| Ok(()),
    )
    .await?;
    let field = |name: &str| {
        let mut found = fields.iter().filter(|(n, _)| n == name).map(|(_, u)| u);
        match (found.next(), found.next()) {
            (Some(u), None) => Ok(Some(u)),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(ApiError::bad(format!("the form has two {name} fields"))),
        }
    };
    let (Some(served), Some(returned)) = (field("served")?, field("returned")?) else {
        return Err(ApiError::bad(
            "send a multipart/form-data form with a served and a returned photo (and an optional empty tray)",
        ));
    };
    let empty = field("empty")?;
    let name = |u: &Upload, default: &str| u.file.clone().unwrap_or_else(|| default.to_string());
    let (served_name, returned_name) = (name(served, "served"), name(returned, "returned"));
    let settings = Settings {
        align: params.align.unwrap_or(true),
        max_pixels: state.options.max_pixels,
        fidelity: state.options.fidelity,
    };
    let (s_bytes, r_bytes) = (served.bytes.clone(), returned.bytes.clone());
    let e_bytes = empty.map(|u| (u.bytes.clone(), name(u, "empty")));
    let for_pool = ready.clone();
    let (s_name, r_name) = (served_name.clone(), returned_name.clone());
    let (mut pieces, measured) = on_pool(move || {
        let empty = match &e_bytes {
            Some((b, n)) => match EmptyTray::from_bytes(b, n, settings.max_pixels) {
                Ok(e) => Some(e),
                Err(e) => return (Vec::new(), Err(format!("{e:#}"))),
            },
            None => None,
        };
        examine_photos(
            Shot::upload(&s_bytes, &s_name),
            Shot::upload(&r_bytes, &r_name),
            &regions,
            &for_pool.preprocess,
            empty.as_ref(),
            settings,
            false,
        )
    })
    .await?;
    if let Err(e) = &measured {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.clone()));
    }
    let pictures = take_pictures(pieces.iter_mut());
    let output = ready
        .batcher
        .run(pictures, true, &mut tickets)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    drop(tickets);
    let mut rankings = output.rankings.into_iter();
    let rankings = pieces
        .iter()
        .map(|p| match &p.picture {
            Ok(_) => Ok(rankings.next().expect("one ranking per picture")),
            Err(e) => Err(e.clone()),
        })
        .collect();
    let tray = Tray {
        name: params.tray.unwrap_or_else(|| served_name.clone()),
        served: Some(served_name),
        returned: Some(returned_name),
        date: params.date,
    };
    let recorder = Recorder {
        menu: None,
        open_set,
    };
    let records = recorder.records(tray, measured, rankings);
    Ok(json_body(&records).into_response())
}

/// The body of `/v1/forecast`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForecastRequest {
    plan: Vec<crate::forecast::plan::Item>,
    #[serde(default = "default_service_level")]
    service_level: f64,
}

fn default_service_level() -> f64 {
    0.9
}

/// `POST /v1/forecast`: a plan (`{"plan": [{"date", "dish", "servings", "portion_g"}],
/// "service_level"}`) answered from the history the server was started with, as
/// `foodclip forecast` answers it.
async fn forecast(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let Some(service) = &state.options.forecast else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this server has no history to forecast from; start it with --history FILE",
        ));
    };
    let request: ForecastRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(format!(
            "send JSON {{\"plan\": [{{\"date\": \"YYYY-MM-DD\", \"dish\": ..., \"servings\": ..., \"portion_g\": ...}}]}}: {e}"
        ))
    })?;
    let rows = service
        .forecast(&request.plan, request.service_level)
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    Ok(json_body(&json!({ "forecasts": rows })).into_response())
}
