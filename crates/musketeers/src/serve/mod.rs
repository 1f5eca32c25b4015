//! `musketeers serve`: a trained system behind an OpenAI-compatible HTTP API (axum + tokio).
//!
//! `POST /v1/chat/completions`, `POST /v1/completions` (JSON or server-sent events),
//! `GET /v1/models`, `GET /health`. Every completion carries an extra field, `musketeers`,
//! with the system's name and, for a run with an interface, each expert's share of the
//! interface's attention on that request and its entropy ([`api::TeamReport`]). Requests join
//! the engine's running decode batch ([`engine`]); a full queue answers 503.

pub mod api;
pub mod engine;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use burn::tensor::backend::Backend;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use api::{ApiError, Limits, TeamReport, Usage};
use engine::{Input, Job, JobEvent, Served};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Required as `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// The name `/v1/models` lists and requests must name.
    pub model: String,
    pub limits: Limits,
    /// Requests waiting for the engine at most; more are answered 503.
    pub queue: usize,
    /// Sequences decoded together at most.
    pub max_rows: usize,
    pub max_body_bytes: usize,
    /// A request body must arrive within this.
    pub body_timeout: Duration,
    /// How long a client may take to send a request's headers (slow-header clients would
    /// otherwise hold connections open for as long as they like).
    pub header_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            api_key: None,
            model: "musketeers".into(),
            limits: Limits::default(),
            queue: 64,
            max_rows: 64,
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("loading the system: {0}")]
    Load(String),
}

struct Shared {
    options: ServeOptions,
    jobs: SyncSender<Job>,
    next_id: std::sync::atomic::AtomicU64,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, axum::Json(self.body())).into_response()
    }
}

/// Serve the system `build` makes (in the engine's thread, which owns it) until `shutdown`
/// completes; in-flight requests are drained first. `ready` is told the bound address.
pub fn serve<B, F>(
    options: ServeOptions,
    build: F,
    ready: impl FnOnce(SocketAddr) + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    B: Backend,
    F: FnOnce() -> Result<Served<B>, String> + Send + 'static,
{
    let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(options.queue.max(1));
    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let engine = std::thread::Builder::new()
        .name("musketeers-engine".into())
        .spawn(move || match build() {
            Ok(served) => {
                let _ = loaded_tx.send(Ok(()));
                engine::run(served, queue);
            }
            Err(e) => {
                let _ = loaded_tx.send(Err(e));
            }
        })?;
    loaded_rx
        .recv()
        .map_err(|_| ServeError::Load("the engine stopped while loading".into()))?
        .map_err(ServeError::Load)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = options.addr;
    let header_timeout = options.header_timeout;
    let shared = Arc::new(Shared {
        options,
        jobs,
        next_id: std::sync::atomic::AtomicU64::new(0),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        ready(listener.local_addr()?);
        let app = Router::new()
            .route("/health", get(health))
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .fallback(not_found)
            .with_state(shared);
        serve_http(listener, app, header_timeout, shutdown).await;
        Ok::<(), ServeError>(())
    })?;
    // The queue's sender is gone with the app: the engine finishes what it has and ends.
    let _ = engine.join();
    Ok(())
}

/// Accept HTTP/1 connections for `app` until `shutdown`, then let in-flight ones finish.
/// Each connection has `header_timeout` to send its headers.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors and the like: wait, do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    graceful.shutdown().await;
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    ApiError::with_status(404, "invalid_request_error", "no such route")
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &shared.options.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError {
            status: 401,
            message: "a valid `Authorization: Bearer` API key is required".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        })
    }
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorized(&shared, &headers) {
        return e.into_response();
    }
    axum::Json(serde_json::json!({"object": "list", "data": [{
        "id": shared.options.model, "object": "model", "created": 0, "owned_by": "musketeers",
    }]}))
    .into_response()
}

/// The body, within the size limit and the time limit.
async fn body(shared: &Shared, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = shared.options.max_body_bytes;
    match tokio::time::timeout(
        shared.options.body_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    {
        Err(_) => Err(ApiError::with_status(
            408,
            "invalid_request_error",
            "the request body did not arrive in time",
        )),
        Ok(Err(_)) => Err(ApiError::with_status(
            413,
            "invalid_request_error",
            format!("the request body is larger than {limit} bytes or broken"),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

fn check_model(shared: &Shared, model: &str) -> Result<(), ApiError> {
    if model == shared.options.model {
        Ok(())
    } else {
        Err(ApiError {
            status: 404,
            message: format!(
                "model: {model:?} is not served here (this server serves {:?})",
                shared.options.model
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        })
    }
}

fn submit(
    shared: &Shared,
    input: Input,
    sampling: api::Sampling,
) -> Result<UnboundedReceiver<JobEvent>, ApiError> {
    let (events, receiver) = unbounded_channel();
    match shared.jobs.try_send(Job {
        input,
        sampling,
        events,
    }) {
        Ok(()) => Ok(receiver),
        Err(TrySendError::Full(_)) => Err(ApiError {
            status: 503,
            message: format!(
                "the server is busy ({} requests queued); retry later",
                shared.options.queue
            ),
            kind: "server_error",
            param: None,
            code: Some("queue_full"),
        }),
        Err(TrySendError::Disconnected(_)) => Err(ApiError::with_status(
            503,
            "server_error",
            "the server is shutting down",
        )),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, raw: Body) -> Response {
    respond(shared, headers, raw, Kind::Chat).await
}

async fn completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, raw: Body) -> Response {
    respond(shared, headers, raw, Kind::Completion).await
}

async fn respond(shared: Arc<Shared>, headers: HeaderMap, raw: Body, kind: Kind) -> Response {
    match start(&shared, &headers, raw, kind).await {
        Ok((receiver, stream)) => {
            let id = shared
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = match kind {
                Kind::Chat => format!("chatcmpl-{id}"),
                Kind::Completion => format!("cmpl-{id}"),
            };
            if stream {
                streamed(shared, receiver, kind, id).into_response()
            } else {
                whole(&shared, receiver, kind, id).await
            }
        }
        Err(e) => e.into_response(),
    }
}

async fn start(
    shared: &Shared,
    headers: &HeaderMap,
    raw: Body,
    kind: Kind,
) -> Result<(UnboundedReceiver<JobEvent>, bool), ApiError> {
    authorized(shared, headers)?;
    let bytes = body(shared, raw).await?;
    let limits = &shared.options.limits;
    let (input, sampling) = match kind {
        Kind::Chat => {
            let request: api::ChatRequest = api::parse(&bytes)?;
            check_model(shared, &request.model)?;
            let (question, sampling) = api::check_chat(&request, limits)?;
            (Input::Question(question), sampling)
        }
        Kind::Completion => {
            let request: api::CompletionRequest = api::parse(&bytes)?;
            check_model(shared, &request.model)?;
            let (prompt, sampling) = api::check_completion(&request, limits)?;
            (Input::Raw(prompt), sampling)
        }
    };
    let stream = sampling.stream;
    Ok((submit(shared, input, sampling)?, stream))
}

fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every event of a request, then one JSON response.
async fn whole(
    shared: &Shared,
    mut receiver: UnboundedReceiver<JobEvent>,
    kind: Kind,
    id: String,
) -> Response {
    let mut texts: BTreeMap<usize, String> = BTreeMap::new();
    let mut reasons: BTreeMap<usize, &'static str> = BTreeMap::new();
    let mut usage = Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
    };
    let mut team: Option<TeamReport> = None;
    while let Some(event) = receiver.recv().await {
        match event {
            JobEvent::Started {
                prompt_tokens,
                team: report,
            } => {
                usage.prompt_tokens = prompt_tokens;
                team = Some(report);
            }
            JobEvent::Text { index, delta } => texts.entry(index).or_default().push_str(&delta),
            JobEvent::Finished {
                index,
                reason,
                completion_tokens,
            } => {
                reasons.insert(index, reason);
                usage.completion_tokens += completion_tokens;
            }
            JobEvent::Failed(e) => return e.into_response(),
        }
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    let choices: Vec<serde_json::Value> = reasons
        .iter()
        .map(|(&index, reason)| {
            let text = texts.remove(&index).unwrap_or_default();
            match kind {
                Kind::Chat => serde_json::json!({"index": index, "finish_reason": reason,
                    "message": {"role": "assistant", "content": text}, "logprobs": null}),
                Kind::Completion => serde_json::json!({"index": index, "finish_reason": reason,
                    "text": text, "logprobs": null}),
            }
        })
        .collect();
    let object = match kind {
        Kind::Chat => "chat.completion",
        Kind::Completion => "text_completion",
    };
    axum::Json(serde_json::json!({
        "id": id, "object": object, "created": created(), "model": shared.options.model,
        "choices": choices, "usage": usage, "musketeers": team,
    }))
    .into_response()
}

/// Server-sent events: a chunk per piece of text, a last chunk with the usage and the team's
/// report, then `[DONE]`.
fn streamed(
    shared: Arc<Shared>,
    receiver: UnboundedReceiver<JobEvent>,
    kind: Kind,
    id: String,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    let chunks = Arc::new(Chunks {
        id,
        kind,
        model: shared.options.model.clone(),
        created: created(),
    });
    let state = StreamState {
        receiver,
        prompt_tokens: 0,
        completion_tokens: 0,
        team: None,
        started: Default::default(),
        done: false,
    };
    let stream = futures_unfold(state, move |mut state| {
        let chunks = chunks.clone();
        async move {
            if state.done {
                return None;
            }
            loop {
                let Some(event) = state.receiver.recv().await else {
                    state.done = true;
                    let last = state.last(&chunks);
                    return Some((last, state));
                };
                if let Some(events) = state.events(event, &chunks) {
                    return Some((events, state));
                }
            }
        }
    });
    Sse::new(stream)
}

/// The chunks of one streamed response, in OpenAI's shapes.
struct Chunks {
    id: String,
    kind: Kind,
    model: String,
    created: u64,
}

impl Chunks {
    fn chunk(&self, choices: serde_json::Value, extra: Option<serde_json::Value>) -> SseEvent {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut value = serde_json::json!({"id": self.id, "object": object,
            "created": self.created, "model": self.model, "choices": choices});
        if let (Some(extra), Some(map)) = (extra, value.as_object_mut())
            && let Some(fields) = extra.as_object()
        {
            map.extend(fields.clone());
        }
        SseEvent::default().data(value.to_string())
    }

    /// Choice `index`'s new text (a chat's first chunk of a choice announces its role).
    fn text(&self, index: usize, delta: String, first: bool) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if self.kind == Kind::Chat && first {
            out.push(self.chunk(
                serde_json::json!([{"index": index, "finish_reason": null,
                    "delta": {"role": "assistant", "content": ""}}]),
                None,
            ));
        }
        out.push(match self.kind {
            Kind::Chat => self.chunk(
                serde_json::json!([{"index": index, "finish_reason": null,
                    "delta": {"content": delta}}]),
                None,
            ),
            Kind::Completion => self.chunk(
                serde_json::json!([{"index": index, "finish_reason": null,
                    "text": delta, "logprobs": null}]),
                None,
            ),
        });
        out
    }

    /// The end of choice `index`.
    fn finished(&self, index: usize, reason: &str) -> SseEvent {
        match self.kind {
            Kind::Chat => self.chunk(
                serde_json::json!([{"index": index, "finish_reason": reason, "delta": {}}]),
                None,
            ),
            Kind::Completion => self.chunk(
                serde_json::json!([{"index": index, "finish_reason": reason,
                    "text": "", "logprobs": null}]),
                None,
            ),
        }
    }
}

/// Where a streamed response stands.
struct StreamState {
    receiver: UnboundedReceiver<JobEvent>,
    prompt_tokens: usize,
    completion_tokens: usize,
    team: Option<TeamReport>,
    started: std::collections::BTreeSet<usize>,
    done: bool,
}

impl StreamState {
    /// What `event` sends; `None`: nothing yet (the request's start is recorded).
    fn events(&mut self, event: JobEvent, chunks: &Chunks) -> Option<Vec<SseEvent>> {
        match event {
            JobEvent::Started {
                prompt_tokens,
                team,
            } => {
                self.prompt_tokens = prompt_tokens;
                self.team = Some(team);
                None
            }
            JobEvent::Text { index, delta } => {
                Some(chunks.text(index, delta, self.started.insert(index)))
            }
            JobEvent::Finished {
                index,
                reason,
                completion_tokens,
            } => {
                self.completion_tokens += completion_tokens;
                Some(vec![chunks.finished(index, reason)])
            }
            JobEvent::Failed(e) => {
                self.done = true;
                Some(vec![
                    SseEvent::default().data(e.body().to_string()),
                    SseEvent::default().data("[DONE]"),
                ])
            }
        }
    }

    /// The usage and the team's report, then `[DONE]`.
    fn last(&self, chunks: &Chunks) -> Vec<SseEvent> {
        let usage = Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens + self.completion_tokens,
        };
        let last = chunks.chunk(
            serde_json::json!([]),
            Some(serde_json::json!({"usage": usage, "musketeers": self.team})),
        );
        vec![last, SseEvent::default().data("[DONE]")]
    }
}

/// A stream of the event batches `step` yields, flattened, until it yields `None`.
fn futures_unfold<S, F, Fut>(
    state: S,
    step: F,
) -> impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>
where
    S: Send + 'static,
    F: FnMut(S) -> Fut + Send + 'static,
    Fut: Future<Output = Option<(Vec<SseEvent>, S)>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(16);
    let mut step = step;
    tokio::spawn(async move {
        let mut state = state;
        while let Some((events, next)) = step(state).await {
            for event in events {
                // The client went away: stop (dropping the job's receiver cancels it).
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            state = next;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
