//! The agent's HTTP endpoints: `/metrics` (Prometheus text format), `/debug/targets` and
//! `/debug/caches` (JSON), and `/healthz`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;

/// Whether the agent is working, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Everything is working.
    Healthy,
    /// Something is wrong; the text says what.
    Unhealthy(String),
}

/// What the endpoints serve; the collect loop updates it.
#[derive(Debug)]
pub struct ServerState {
    /// Every metric the agent exposes.
    pub registry: Mutex<Registry>,
    /// JSON served at `/debug/targets`.
    pub targets: RwLock<serde_json::Value>,
    /// JSON served at `/debug/caches`.
    pub caches: RwLock<serde_json::Value>,
    /// What `/healthz` reports about the profiling session.
    pub health: RwLock<Health>,
    /// The failing target discoveries, one line each (`/healthz` names them).
    pub discovery_failures: RwLock<Vec<String>>,
}

impl ServerState {
    /// A state serving `registry`, healthy, with empty debug documents.
    pub fn new(registry: Registry) -> Self {
        ServerState {
            registry: Mutex::new(registry),
            targets: RwLock::new(serde_json::json!([])),
            caches: RwLock::new(serde_json::json!({})),
            health: RwLock::new(Health::Healthy),
            discovery_failures: RwLock::new(Vec::new()),
        }
    }

    /// Sets what `/healthz` reports.
    pub fn set_health(&self, health: Health) {
        *self.health.write().unwrap_or_else(|e| e.into_inner()) = health;
    }

    /// Sets the failing discoveries `/healthz` names.
    pub fn set_discovery_failures(&self, failures: Vec<String>) {
        *self
            .discovery_failures
            .write()
            .unwrap_or_else(|e| e.into_inner()) = failures;
    }

    /// What `/healthz` answers: the session's failure, else the failing discoveries.
    pub fn health(&self) -> Health {
        if let Health::Unhealthy(why) = &*self.health.read().unwrap_or_else(|e| e.into_inner()) {
            return Health::Unhealthy(why.clone());
        }
        let failing = self
            .discovery_failures
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if failing.is_empty() {
            Health::Healthy
        } else {
            Health::Unhealthy(format!(
                "{} failing (profiling goes on for the other targets):\n{}",
                if failing.len() == 1 {
                    "a target discovery is".to_owned()
                } else {
                    format!("{} target discoveries are", failing.len())
                },
                failing.join("\n")
            ))
        }
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    respond(StatusCode::OK, "application/json", text)
}

/// Answers one request.
pub fn handle(state: &ServerState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is supported\n",
        );
    }
    match path {
        "/metrics" => {
            let mut text = String::new();
            let registry = state.registry.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
                return respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("encoding failed: {e}\n"),
                );
            }
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        "/debug/targets" => json(&state.targets.read().unwrap_or_else(|e| e.into_inner())),
        "/debug/caches" => json(&state.caches.read().unwrap_or_else(|e| e.into_inner())),
        "/healthz" => match &state.health() {
            Health::Healthy => respond(StatusCode::OK, "text/plain", "ok\n"),
            Health::Unhealthy(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("unhealthy: {why}\n"),
            ),
        },
        "/" => respond(
            StatusCode::OK,
            "text/plain",
            "ferroscope agent: /metrics /debug/targets /debug/caches /healthz\n",
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /debug/targets, /debug/caches or /healthz\n",
        ),
    }
}

/// Serves the endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accepting an HTTP connection failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = handle(&state, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn endpoints_answer() {
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        registry.register("pyroscope_ebpf_profiling_sessions", "sessions", c.clone());
        c.inc_by(3);
        let state = ServerState::new(registry);
        let body = |r: Response<Full<Bytes>>| {
            let status = r.status();
            let bytes = futures_body(r);
            (status, String::from_utf8(bytes).unwrap())
        };
        let (status, text) = body(handle(&state, &Method::GET, "/metrics"));
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("pyroscope_ebpf_profiling_sessions_total 3"),
            "{text}"
        );
        let (status, _) = body(handle(&state, &Method::GET, "/healthz"));
        assert_eq!(status, StatusCode::OK);
        state.set_health(Health::Unhealthy("invalid configuration".into()));
        let (status, text) = body(handle(&state, &Method::GET, "/healthz"));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("invalid configuration"));
        state.set_health(Health::Healthy);
        state.set_discovery_failures(vec![
            "discovery.docker #1 (unix:///nope.sock): cannot connect".into(),
        ]);
        let (status, text) = body(handle(&state, &Method::GET, "/healthz"));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.contains("a target discovery is failing")
                && text.contains("discovery.docker #1 (unix:///nope.sock): cannot connect"),
            "{text}"
        );
        state.set_discovery_failures(Vec::new());
        let (status, _) = body(handle(&state, &Method::GET, "/healthz"));
        assert_eq!(status, StatusCode::OK);
        *state.targets.write().unwrap() = serde_json::json!([{"service_name": "a"}]);
        let (_, text) = body(handle(&state, &Method::GET, "/debug/targets"));
        assert!(text.contains("\"service_name\": \"a\""));
        assert_eq!(
            handle(&state, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            handle(&state, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    fn futures_body(r: Response<Full<Bytes>>) -> Vec<u8> {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { r.into_body().collect().await.unwrap().to_bytes().to_vec() })
    }
}
