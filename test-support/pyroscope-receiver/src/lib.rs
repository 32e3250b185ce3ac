//! A Pyroscope-compatible receiver for ferroscope's tests.
//!
//! It serves the two ways an agent sends profiles to Pyroscope: the Connect
//! unary call `POST /push.v1.PusherService/Push` (a `push.v1.PushRequest` in
//! protobuf) and the legacy `POST /ingest?name=app{k=v}&...` (a raw pprof body).
//! Every request is decoded with the same message definitions the client uses
//! (`ferroscope_pprof::api`) and the pprof inside is decoded too, and what
//! arrived is kept as a [`Record`] (and optionally written as JSON lines), so a
//! test can check labels, headers, sample types and stacks.
//!
//! A fault script ([`Fault`], parsed by [`parse_faults`]) makes the receiver
//! misbehave on the next requests, in order, then answer 200 again: an error
//! status, a hang past the client's timeout, or dropped connections.
//!
//! It is test code: it binds to what it is given (tests use 127.0.0.1 with an
//! ephemeral port), keeps everything in memory and never talks to anything else.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use ferroscope_pprof::api::push::v1::PushRequest;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message;
use serde::Serialize;
use tokio::net::TcpListener;

/// The largest request body accepted: 64 MiB.
const MAX_BODY: usize = 64 << 20;

/// One misbehaviour, applied to one request (or several, for [`Fault::Down`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status. With a Connect code, the body is the
    /// Connect JSON error `{"code":...,"message":...}`; without, plain text.
    Status(u16, Option<String>),
    /// Wait this long, then answer normally (a client with a shorter timeout
    /// gives up first).
    Hang(Duration),
    /// Close the connection without answering, for this many requests.
    Down(u32),
}

/// Parses a fault script: comma-separated entries, used one per request in
/// order, after which the receiver answers normally.
///
/// Entries: `503` (a status, plain body), `400:invalid_argument` (a status with
/// a Connect JSON error of that code), `hang:15s` (also `ms`), `down:3` (close
/// the next 3 connections without answering), `200` (answer normally).
pub fn parse_faults(spec: &str) -> anyhow::Result<Vec<Fault>> {
    let mut out = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let fault = if let Some(d) = entry.strip_prefix("hang:") {
            Fault::Hang(parse_duration(d)?)
        } else if let Some(n) = entry.strip_prefix("down:") {
            let n = n.parse().with_context(|| {
                format!("fault {entry:?}: the count after down: is not a number")
            })?;
            Fault::Down(n)
        } else {
            let (status, code) = match entry.split_once(':') {
                Some((s, c)) => (s, Some(c.to_owned())),
                None => (entry, None),
            };
            let status: u16 = status.parse().with_context(|| {
                format!("fault {entry:?} is not a status, status:code, hang:DURATION or down:N")
            })?;
            if !(100..=599).contains(&status) {
                bail!("fault {entry:?}: {status} is not an HTTP status");
            }
            Fault::Status(status, code)
        };
        out.push(fault);
    }
    Ok(out)
}

/// Parses `15s`, `250ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let parsed = if let Some(ms) = s.strip_suffix("ms") {
        ms.parse().map(Duration::from_millis)
    } else if let Some(secs) = s.strip_suffix('s') {
        secs.parse().map(Duration::from_secs)
    } else {
        s.parse().map(Duration::from_secs)
    };
    parsed.with_context(|| format!("{s:?} is not a duration like 15s or 250ms"))
}

/// How the receiver behaves and where it reports.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The fault script, applied to the first requests in order.
    pub faults: Vec<Fault>,
    /// A delay added to every request (to make requests overlap).
    pub delay: Duration,
    /// Where to write JSON lines: `None` nowhere, `Some("-")` stdout, else a file
    /// (appended to).
    pub output: Option<PathBuf>,
}

/// What one request carried and how it was answered.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    /// `push` or `ingest` (or `other` for an unknown path).
    pub api: String,
    /// The request path.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// The query parameters, percent-decoded.
    pub params: BTreeMap<String, String>,
    /// The request headers (lower-case names; repeated headers joined by `, `).
    pub headers: BTreeMap<String, String>,
    /// The series in the request (one for `/ingest`, with labels from `name`).
    pub series: Vec<SeriesRecord>,
    /// The HTTP status answered (0 when the connection was dropped).
    pub status: u16,
    /// The fault applied, if any.
    pub fault: Option<String>,
    /// Why the request could not be decoded, if it could not.
    pub error: Option<String>,
}

/// One series of a push.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesRecord {
    /// The labels in the order received.
    pub labels: Vec<(String, String)>,
    /// One entry per raw sample (profile).
    pub profiles: Vec<ProfileRecord>,
}

/// A summary of one decoded pprof profile.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProfileRecord {
    /// The size of the raw (gzip) profile in bytes.
    pub raw_bytes: usize,
    /// The sample types as `type/unit`.
    pub sample_types: Vec<String>,
    /// The period type as `type/unit` (empty if none).
    pub period_type: String,
    /// The period.
    pub period: i64,
    /// The number of samples.
    pub samples: usize,
    /// The profile's time in nanoseconds.
    pub time_nanos: i64,
    /// The distinct stacks of function names, root first, with the summed
    /// first value.
    pub stacks: Vec<(Vec<String>, i64)>,
}

struct State {
    faults: Mutex<VecDeque<Fault>>,
    delay: Duration,
    records: Mutex<Vec<Record>>,
    output: Mutex<Option<Box<dyn Write + Send>>>,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A receiver's shared state: cheap to clone, one per server.
#[derive(Clone)]
pub struct Receiver {
    state: Arc<State>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("requests", &self.requests())
            .field("max_in_flight", &self.max_in_flight())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Creates a receiver; opens the output file if one is configured.
    pub fn new(config: Config) -> anyhow::Result<Receiver> {
        let output: Option<Box<dyn Write + Send>> = match &config.output {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
            Some(p) => Some(Box::new(
                File::options()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("could not open the output file {}", p.display()))?,
            )),
        };
        Ok(Receiver {
            state: Arc::new(State {
                faults: Mutex::new(config.faults.into()),
                delay: config.delay,
                records: Mutex::new(Vec::new()),
                output: Mutex::new(output),
                requests: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
            }),
        })
    }

    /// Every request received so far, in arrival order of completion.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.state.records).clone()
    }

    /// The requests answered with 200.
    pub fn accepted(&self) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    /// How many requests arrived (including faulted ones).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The most requests that were being handled at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Appends faults to the script.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.state.faults).extend(faults);
    }

    fn next_fault(&self) -> Option<Fault> {
        let mut faults = lock(&self.state.faults);
        match faults.pop_front()? {
            Fault::Down(n) if n > 1 => {
                faults.push_front(Fault::Down(n - 1));
                Some(Fault::Down(1))
            }
            Fault::Down(0) => None,
            f => Some(f),
        }
    }

    fn record(&self, record: Record) {
        if let Some(out) = lock(&self.state.output).as_mut() {
            match serde_json::to_vec(&record) {
                Ok(mut line) => {
                    line.push(b'\n');
                    if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
                        tracing::warn!("could not write a record: {e}");
                    }
                }
                Err(e) => tracing::warn!("could not serialize a record: {e}"),
            }
        }
        lock(&self.state.records).push(record);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Binds `127.0.0.1:0` and serves `config` on a tokio task; returns the address
/// and the receiver's state.
pub async fn spawn(config: Config) -> anyhow::Result<(SocketAddr, Receiver)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("could not bind 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = Receiver::new(config)?;
    let r = receiver.clone();
    tokio::spawn(async move {
        if let Err(e) = serve_receiver(listener, r).await {
            tracing::warn!("receiver stopped: {e}");
        }
    });
    Ok((addr, receiver))
}

/// Serves `config` on `listener` until an accept error.
pub async fn serve(listener: TcpListener, config: Config) -> anyhow::Result<()> {
    serve_receiver(listener, Receiver::new(config)?).await
}

/// Serves with an existing receiver state (so the caller can inspect it).
pub async fn serve_receiver(listener: TcpListener, receiver: Receiver) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accept failed")?;
        let receiver = receiver.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let receiver = receiver.clone();
                async move { receiver.handle(req).await }
            });
            // Errors here are dropped connections, some on purpose (Fault::Down).
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Decrements the in-flight count when a request ends, even if cancelled.
struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by a fault")
    }
}

impl std::error::Error for Dropped {}

impl Receiver {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
        let state = &*self.state;
        state.requests.fetch_add(1, Ordering::SeqCst);
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _guard = InFlight(state);

        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in req.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let api = match (req.method(), path.as_str()) {
            (&Method::POST, "/push.v1.PusherService/Push") => "push",
            (&Method::POST, "/ingest") => "ingest",
            _ => "other",
        };
        let mut record = Record {
            api: api.to_owned(),
            path,
            params: query.as_deref().map(parse_query).unwrap_or_default(),
            query,
            headers,
            series: Vec::new(),
            status: 200,
            fault: None,
            error: None,
        };
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                record.error = Some(format!("could not read the body: {e}"));
                record.status = 400;
                self.record(record);
                return Ok(connect_error(
                    400,
                    "invalid_argument",
                    "could not read the body",
                ));
            }
        };
        if !state.delay.is_zero() {
            tokio::time::sleep(state.delay).await;
        }

        let fault = if api == "other" {
            None
        } else {
            self.next_fault()
        };
        record.fault = fault.as_ref().map(|f| format!("{f:?}"));
        match fault {
            Some(Fault::Down(_)) => {
                record.status = 0;
                self.record(record);
                return Err(Dropped);
            }
            Some(Fault::Hang(d)) => tokio::time::sleep(d).await,
            Some(Fault::Status(200, _)) | None => {}
            Some(Fault::Status(status, code)) => {
                record.status = status;
                self.record(record);
                return Ok(match code {
                    Some(code) => {
                        connect_error(status, &code, "fault injected by the test receiver")
                    }
                    None => plain(status, "fault injected by the test receiver"),
                });
            }
        }

        let decoded = match api {
            "push" => decode_push(&body),
            "ingest" => decode_ingest(&record.params, &body),
            _ => {
                record.status = 404;
                self.record(record);
                return Ok(plain(404, "not found"));
            }
        };
        match decoded {
            Ok(series) => {
                record.series = series;
                self.record(record);
                let mut resp = Response::new(Full::new(Bytes::new()));
                if api == "push" {
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/proto"),
                    );
                }
                Ok(resp)
            }
            Err(e) => {
                let message = format!("{e:#}");
                record.status = 400;
                record.error = Some(message.clone());
                self.record(record);
                Ok(connect_error(400, "invalid_argument", &message))
            }
        }
    }
}

fn plain(status: u16, text: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text.to_owned())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

fn connect_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    let mut resp = plain(status, "");
    *resp.body_mut() = Full::new(Bytes::from(body));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn decode_push(body: &[u8]) -> anyhow::Result<Vec<SeriesRecord>> {
    let req = PushRequest::decode(body).context("the body is not a push.v1.PushRequest")?;
    req.series
        .into_iter()
        .map(|s| {
            Ok(SeriesRecord {
                labels: s.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                profiles: s
                    .samples
                    .iter()
                    .map(|raw| summarize(&raw.raw_profile))
                    .collect::<anyhow::Result<_>>()?,
            })
        })
        .collect()
}

fn decode_ingest(
    params: &BTreeMap<String, String>,
    body: &[u8],
) -> anyhow::Result<Vec<SeriesRecord>> {
    let name = params
        .get("name")
        .context("the name parameter is missing")?;
    let (app, rest) = match name.split_once('{') {
        Some((app, rest)) => (
            app,
            rest.strip_suffix('}').context("name has no closing }")?,
        ),
        None => (name.as_str(), ""),
    };
    let mut labels = vec![("service_name".to_owned(), app.to_owned())];
    for pair in rest.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("label {pair:?} has no ="))?;
        labels.push((k.to_owned(), v.to_owned()));
    }
    Ok(vec![SeriesRecord {
        labels,
        profiles: vec![summarize(body)?],
    }])
}

fn summarize(raw: &[u8]) -> anyhow::Result<ProfileRecord> {
    let p = ferroscope_pprof::decode(raw).context("the profile is not a valid pprof")?;
    let s = |i: i64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .cloned()
            .unwrap_or_default()
    };
    let vt = |v: &ferroscope_pprof::proto::ValueType| format!("{}/{}", s(v.r#type), s(v.unit));
    Ok(ProfileRecord {
        raw_bytes: raw.len(),
        sample_types: p.sample_type.iter().map(vt).collect(),
        period_type: p.period_type.as_ref().map(vt).unwrap_or_default(),
        period: p.period,
        samples: p.sample.len(),
        time_nanos: p.time_nanos,
        stacks: ferroscope_pprof::report::stacks(&p, 0),
    })
}

/// Splits and percent-decodes a query string (`+` is a space).
fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits make at most 0xff.
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(
            parse_faults("503, 400:invalid_argument,hang:15s,hang:250ms,down:3,200").unwrap(),
            vec![
                Fault::Status(503, None),
                Fault::Status(400, Some("invalid_argument".into())),
                Fault::Hang(Duration::from_secs(15)),
                Fault::Hang(Duration::from_millis(250)),
                Fault::Down(3),
                Fault::Status(200, None),
            ]
        );
        assert!(parse_faults("hang").is_err());
        assert!(parse_faults("99").is_err());
    }

    #[test]
    fn query_decodes() {
        let q = parse_query("name=app%7Bk%3Dv%7D&from=1&x=a+b&bad=%zz&end=%4");
        assert_eq!(q["name"], "app{k=v}");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
