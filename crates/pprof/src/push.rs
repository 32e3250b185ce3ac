//! Sending profiles to Pyroscope-compatible servers, as Grafana Alloy's
//! `pyroscope.write` does.
//!
//! A [`Writer`] owns one HTTP client per endpoint. Each collect interval the
//! agent hands it the interval's profiles with [`Writer::send_round`]; every
//! endpoint then works through them independently (a slow or dead endpoint does
//! not hold the others back), with at most [`MAX_IN_FLIGHT`] requests at a time,
//! retries with jittered exponential backoff, and a hard deadline: whatever is
//! not sent when the round's deadline passes is dropped and counted, so a
//! stalled server costs neither unbounded memory nor overlapping rounds.
//!
//! Two wire formats ([`Api`]): the Connect unary call
//! `POST <url>/push.v1.PusherService/Push` with a `push.v1.PushRequest`
//! (one series, one sample per request) and the legacy
//! `POST <url>/ingest?name=app{k=v}&from=&until=&format=pprof`.
//!
//! Nothing is lost silently: every profile ends up in exactly one of
//! `pyroscope_write_sent_profiles_total` and `pyroscope_write_dropped_profiles_total`
//! per endpoint ([`WriteMetrics`]), and drops are logged with their reason.
//!
//! TLS uses rustls with the ring crypto provider and the system's root
//! certificates. If the process has not installed a default rustls crypto
//! provider, [`Writer::new`] installs ring's.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prost::Message;
use prost::bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Error;
use crate::api::push::v1::{PushRequest, RawProfileSeries, RawSample};
use crate::api::types::v1::LabelPair;

/// The most requests one endpoint has in flight at a time.
pub const MAX_IN_FLIGHT: usize = 32;

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("ferroscope/", env!("CARGO_PKG_VERSION"));

const PUSH_PATH: &str = "/push.v1.PusherService/Push";
const INGEST_PATH: &str = "/ingest";
/// How much of an error response body is read (for its message).
const MAX_ERROR_BODY: usize = 64 << 10;

/// Which API an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// Connect `push.v1.PusherService/Push` (what `pyroscope.write` uses).
    #[default]
    Push,
    /// The legacy `/ingest` HTTP API, one raw pprof per request.
    Ingest,
}

/// One server to send profiles to, with the settings of Alloy's
/// `pyroscope.write` `endpoint` block.
///
/// `password_file` and `bearer_token_file` are the caller's business: read
/// them and fill in `basic_auth` / `bearer_token`.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The server's base URL (`http://` or `https://`); a trailing `/` is ignored.
    pub url: String,
    /// HTTP basic authentication: user and password.
    pub basic_auth: Option<(String, String)>,
    /// Bearer token authentication (exclusive with `basic_auth`).
    pub bearer_token: Option<String>,
    /// Extra headers sent with every request. They cannot replace the
    /// protocol's own headers (content type, Connect headers, auth, tenant).
    pub headers: Vec<(String, String)>,
    /// The tenant, sent as `X-Scope-OrgID`.
    pub tenant_id: Option<String>,
    /// The timeout of each attempt (default 10 s).
    pub remote_timeout: Duration,
    /// The first backoff's lower bound (default 500 ms).
    pub min_backoff: Duration,
    /// The largest backoff (default 5 min).
    pub max_backoff: Duration,
    /// How many times a failed request is retried; 0 retries until the round's
    /// deadline (default 10).
    pub max_backoff_retries: u32,
    /// Whether HTTP 429 (and `resource_exhausted`) is retried (default true).
    pub retry_on_http_429: bool,
    /// The API to use (default [`Api::Push`]).
    pub api: Api,
}

impl EndpointConfig {
    /// An endpoint at `url` with Alloy's defaults.
    pub fn new(url: impl Into<String>) -> EndpointConfig {
        EndpointConfig {
            url: url.into(),
            basic_auth: None,
            bearer_token: None,
            headers: Vec::new(),
            tenant_id: None,
            remote_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            max_backoff_retries: 10,
            retry_on_http_429: true,
            api: Api::Push,
        }
    }
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_struct("EndpointConfig")
            .field("url", &self.url)
            .field(
                "basic_auth",
                &self.basic_auth.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("tenant_id", &self.tenant_id)
            .field("remote_timeout", &self.remote_timeout)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_backoff_retries", &self.max_backoff_retries)
            .field("retry_on_http_429", &self.retry_on_http_429)
            .field("api", &self.api)
            .finish()
    }
}

/// One profile to send: its series labels and the gzip-compressed pprof.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeriesProfile {
    /// The series labels (`service_name`, `__name__`, the target's labels...),
    /// in any order; [`process_labels`] cleans them up before sending.
    pub labels: Vec<(String, String)>,
    /// The profile, encoded and gzip-compressed ([`crate::encode_gzip`]).
    pub pprof_gzip: Vec<u8>,
}

/// Prepares a profile's series labels as `pyroscope.write` does: `external`
/// labels are added (replacing labels of the same name), every label whose
/// name starts with `__` is dropped except `__name__` and `__delta__`, and the
/// result is sorted by name.
///
/// Rejects an empty set, duplicate names, and names with characters outside
/// `[A-Za-z0-9_.]` (`__name__` is exempt), as the server would.
pub fn process_labels(
    labels: &[(String, String)],
    external: &[(String, String)],
) -> Result<Vec<(String, String)>, Error> {
    let mut out: Vec<(String, String)> = labels.to_vec();
    for (name, value) in external {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(existing) => existing.1.clone_from(value),
            None => out.push((name.clone(), value.clone())),
        }
    }
    out.retain(|(name, _)| !name.starts_with("__") || name == "__name__" || name == "__delta__");
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let reject = |reason: String| Error::InvalidLabels {
        labels: format_labels(labels),
        reason,
    };
    if out.is_empty() {
        return Err(reject(
            "the label set is empty (after dropping __* labels)".into(),
        ));
    }
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(reject(format!(
            "the label name {:?} appears more than once",
            w[0].0
        )));
    }
    if let Some((name, _)) = out
        .iter()
        .find(|(n, _)| n != "__name__" && !valid_label_name(n))
    {
        return Err(reject(format!(
            "the label name {name:?} is invalid: names must be non-empty and use only A-Z, a-z, 0-9, _ and ."
        )));
    }
    Ok(out)
}

fn valid_label_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

fn format_labels(labels: &[(String, String)]) -> String {
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// The label set of every write metric: `endpoint`.
type EndpointLabels = Vec<(String, String)>;

fn new_latency_histogram() -> Histogram {
    // 5 ms .. ~41 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The metrics of `pyroscope.write`, labelled by `endpoint` (the endpoint's
/// URL without credentials). Cheap to clone: clones share the values.
#[derive(Debug, Clone)]
pub struct WriteMetrics {
    sent_bytes: Family<EndpointLabels, Counter>,
    dropped_bytes: Family<EndpointLabels, Counter>,
    sent_profiles: Family<EndpointLabels, Counter>,
    dropped_profiles: Family<EndpointLabels, Counter>,
    retries: Family<EndpointLabels, Counter>,
    latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
}

impl Default for WriteMetrics {
    fn default() -> Self {
        WriteMetrics::new()
    }
}

impl WriteMetrics {
    /// Metrics that are not registered anywhere (tests, or register later with
    /// [`WriteMetrics::register_in`]).
    pub fn new() -> WriteMetrics {
        WriteMetrics {
            sent_bytes: Family::default(),
            dropped_bytes: Family::default(),
            sent_profiles: Family::default(),
            dropped_profiles: Family::default(),
            retries: Family::default(),
            latency: Family::new_with_constructor(new_latency_histogram),
        }
    }

    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> WriteMetrics {
        let m = WriteMetrics::new();
        m.register_in(registry);
        m
    }

    /// Registers these metrics in `registry` (counters get the `_total` suffix
    /// there: `pyroscope_write_sent_bytes_total`, ...).
    pub fn register_in(&self, registry: &mut Registry) {
        registry.register(
            "pyroscope_write_sent_bytes",
            "Total number of compressed profile bytes sent",
            self.sent_bytes.clone(),
        );
        registry.register(
            "pyroscope_write_dropped_bytes",
            "Total number of compressed profile bytes dropped",
            self.dropped_bytes.clone(),
        );
        registry.register(
            "pyroscope_write_sent_profiles",
            "Total number of profiles sent",
            self.sent_profiles.clone(),
        );
        registry.register(
            "pyroscope_write_dropped_profiles",
            "Total number of profiles dropped (rejected, failed, or not sent before the round's deadline)",
            self.dropped_profiles.clone(),
        );
        registry.register(
            "pyroscope_write_retries",
            "Total number of retried requests",
            self.retries.clone(),
        );
        registry.register(
            "pyroscope_write_latency",
            "Duration of each request attempt, in seconds",
            self.latency.clone(),
        );
    }

    /// Profiles sent to `endpoint` so far.
    pub fn sent_profiles(&self, endpoint: &str) -> u64 {
        self.sent_profiles
            .get_or_create(&endpoint_labels(endpoint))
            .get()
    }

    /// Profiles dropped for `endpoint` so far.
    pub fn dropped_profiles(&self, endpoint: &str) -> u64 {
        self.dropped_profiles
            .get_or_create(&endpoint_labels(endpoint))
            .get()
    }

    /// Bytes sent to `endpoint` so far.
    pub fn sent_bytes(&self, endpoint: &str) -> u64 {
        self.sent_bytes
            .get_or_create(&endpoint_labels(endpoint))
            .get()
    }

    /// Bytes dropped for `endpoint` so far.
    pub fn dropped_bytes(&self, endpoint: &str) -> u64 {
        self.dropped_bytes
            .get_or_create(&endpoint_labels(endpoint))
            .get()
    }

    /// Retries made for `endpoint` so far.
    pub fn retries(&self, endpoint: &str) -> u64 {
        self.retries.get_or_create(&endpoint_labels(endpoint)).get()
    }

    /// Creates every series of `labels` at zero, so they are exported before
    /// the first profile (rates and alerts need the zero).
    fn touch(&self, labels: &EndpointLabels) {
        for family in [
            &self.sent_bytes,
            &self.dropped_bytes,
            &self.sent_profiles,
            &self.dropped_profiles,
            &self.retries,
        ] {
            let _created = family.get_or_create(labels);
        }
        let _created = self.latency.get_or_create(labels);
    }

    fn sent(&self, labels: &EndpointLabels, bytes: usize) {
        self.sent_profiles.get_or_create(labels).inc();
        self.sent_bytes.get_or_create(labels).inc_by(bytes as u64);
    }

    fn dropped(&self, labels: &EndpointLabels, bytes: usize) {
        self.dropped_profiles.get_or_create(labels).inc();
        self.dropped_bytes
            .get_or_create(labels)
            .inc_by(bytes as u64);
    }
}

fn endpoint_labels(endpoint: &str) -> EndpointLabels {
    vec![("endpoint".to_owned(), endpoint.to_owned())]
}

/// Sends profiles to a set of endpoints; see the [module docs](self).
///
/// Cheap to clone (the clones share clients and metrics).
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<Arc<Endpoint>>,
    external_labels: Vec<(String, String)>,
    metrics: Arc<WriteMetrics>,
}

struct Endpoint {
    config: EndpointConfig,
    /// The URL requests go to (base URL plus the API's path).
    target: reqwest::Url,
    /// The value of the `endpoint` metric label (URL without credentials).
    name: String,
    labels: EndpointLabels,
    client: reqwest::Client,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field(
                "endpoints",
                &self
                    .inner
                    .endpoints
                    .iter()
                    .map(|e| &e.config)
                    .collect::<Vec<_>>(),
            )
            .field("external_labels", &self.inner.external_labels)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Creates a writer for `endpoints`; `external_labels` are added to every
    /// profile's labels (replacing labels of the same name).
    ///
    /// Fails if an endpoint's URL is not an absolute `http`/`https` URL, if it
    /// sets both basic and bearer auth, has a zero `remote_timeout` or a header
    /// that is not valid HTTP, or if the HTTP client cannot be created.
    pub fn new(
        endpoints: Vec<EndpointConfig>,
        external_labels: Vec<(String, String)>,
        metrics: Arc<WriteMetrics>,
    ) -> Result<Writer, Error> {
        ensure_crypto_provider();
        let endpoints: Vec<Arc<Endpoint>> = endpoints
            .into_iter()
            .map(|config| Endpoint::new(config).map(Arc::new))
            .collect::<Result<_, _>>()?;
        for ep in &endpoints {
            metrics.touch(&ep.labels);
        }
        Ok(Writer {
            inner: Arc::new(Inner {
                endpoints,
                external_labels,
                metrics,
            }),
        })
    }

    /// The `endpoint` metric label of each endpoint, in configuration order.
    pub fn endpoint_names(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    /// Sends one round of profiles to every endpoint, each independently, and
    /// returns when every endpoint is done or `deadline` has passed, whichever
    /// comes first.
    ///
    /// Each profile becomes one request per endpoint; what has not been sent
    /// by `deadline` is dropped and counted. Profiles whose labels are
    /// rejected by [`process_labels`] are dropped (and counted for every
    /// endpoint) with a logged reason. Failures are logged and counted, never
    /// returned: the next round starts fresh.
    pub async fn send_round(&self, profiles: Vec<SeriesProfile>, deadline: Instant) {
        let deadline = tokio::time::Instant::from_std(deadline);
        let inner = &self.inner;
        let needs_ingest = inner.endpoints.iter().any(|e| e.config.api == Api::Ingest);
        let needs_push = inner.endpoints.iter().any(|e| e.config.api == Api::Push);
        let mut prepared = Vec::with_capacity(profiles.len());
        for profile in profiles {
            match process_labels(&profile.labels, &inner.external_labels) {
                Ok(labels) => prepared.push(Prepared::new(
                    labels,
                    profile.pprof_gzip,
                    needs_push,
                    needs_ingest,
                )),
                Err(e) => {
                    tracing::warn!("dropping a profile: {}", crate::error::Chain(&e));
                    for ep in &inner.endpoints {
                        inner.metrics.dropped(&ep.labels, profile.pprof_gzip.len());
                    }
                }
            }
        }
        let prepared = Arc::new(prepared);
        let mut rounds = JoinSet::new();
        for ep in &inner.endpoints {
            rounds.spawn(endpoint_round(
                Arc::clone(ep),
                Arc::clone(&inner.metrics),
                Arc::clone(&prepared),
                deadline,
            ));
        }
        while rounds.join_next().await.is_some() {}
    }
}

/// Installs ring as the process's rustls crypto provider unless one is set.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is set either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl Endpoint {
    fn new(config: EndpointConfig) -> Result<Endpoint, Error> {
        let invalid = |reason: String| Error::Endpoint {
            url: config.url.clone(),
            reason,
        };
        let base = config.url.trim_end_matches('/');
        let path = match config.api {
            Api::Push => PUSH_PATH,
            Api::Ingest => INGEST_PATH,
        };
        let target = reqwest::Url::parse(&format!("{base}{path}"))
            .map_err(|e| invalid(format!("the URL does not parse ({e})")))?;
        if !matches!(target.scheme(), "http" | "https") {
            return Err(invalid(
                "the URL must start with http:// or https://".into(),
            ));
        }
        if target.query().is_some() || target.fragment().is_some() {
            return Err(invalid("the URL must not have a query or fragment".into()));
        }
        if config.basic_auth.is_some() && config.bearer_token.is_some() {
            return Err(invalid(
                "basic_auth and bearer_token are both set; use one".into(),
            ));
        }
        if config.remote_timeout.is_zero() {
            return Err(invalid(
                "remote_timeout is zero; use a positive timeout such as 10s".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("the header name {name:?} is not valid HTTP")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("the value of header {name} is not valid HTTP")))?;
            headers.insert(name, value);
        }
        let mut display = reqwest::Url::parse(base)
            .map_err(|e| invalid(format!("the URL does not parse ({e})")))?;
        // Ignoring errors: URLs that cannot have credentials have none to strip.
        let _ = display.set_username("");
        let _ = display.set_password(None);
        let name = display.as_str().trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .connect_timeout(config.remote_timeout)
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .build()
            .map_err(|source| Error::HttpClient {
                url: config.url.clone(),
                source,
            })?;
        Ok(Endpoint {
            labels: endpoint_labels(&name),
            name,
            target,
            client,
            config,
        })
    }

    /// Adds the per-request headers every API shares: tenant and auth.
    fn authorize(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(tenant) = &self.config.tenant_id {
            req = req.header("X-Scope-OrgID", tenant);
        }
        if let Some((user, password)) = &self.config.basic_auth {
            req = req.basic_auth(user, Some(password));
        }
        if let Some(token) = &self.config.bearer_token {
            req = req.bearer_auth(token);
        }
        req
    }
}

/// A profile ready to send: labels processed, bodies encoded once for all endpoints.
struct Prepared {
    labels: Vec<(String, String)>,
    pprof: Bytes,
    /// The encoded `PushRequest`, if a push endpoint needs it.
    push_body: Option<Bytes>,
    /// The `/ingest` query parameters, if an ingest endpoint needs them (or why
    /// they could not be made).
    ingest_query: Option<Result<Vec<(&'static str, String)>, String>>,
}

impl Prepared {
    fn new(labels: Vec<(String, String)>, pprof: Vec<u8>, push: bool, ingest: bool) -> Prepared {
        let pprof = Bytes::from(pprof);
        let push_body = push.then(|| {
            let req = PushRequest {
                series: vec![RawProfileSeries {
                    labels: labels
                        .iter()
                        .map(|(name, value)| LabelPair {
                            name: name.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                    samples: vec![RawSample {
                        raw_profile: pprof.to_vec(),
                        id: String::new(),
                    }],
                }],
            };
            Bytes::from(req.encode_to_vec())
        });
        let ingest_query = ingest.then(|| ingest_query(&labels, &pprof));
        Prepared {
            labels,
            pprof,
            push_body,
            ingest_query,
        }
    }
}

/// The `/ingest` query: `name=<service_name>{k=v,...}`, `from`/`until` (Unix
/// seconds, from the profile's time and duration), `format=pprof` and, for
/// CPU profiles, `sampleRate` (Hz, from the period).
fn ingest_query(
    labels: &[(String, String)],
    pprof: &[u8],
) -> Result<Vec<(&'static str, String)>, String> {
    let profile = crate::decode(pprof).map_err(|e| e.to_string())?;
    let service = labels
        .iter()
        .find(|(n, _)| n == "service_name")
        .map_or("unspecified", |(_, v)| v.as_str());
    let rest: Vec<String> = labels
        .iter()
        .filter(|(n, _)| n != "service_name" && !n.starts_with("__"))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    let name = if rest.is_empty() {
        service.to_owned()
    } else {
        format!("{service}{{{}}}", rest.join(","))
    };
    const NS: i64 = 1_000_000_000;
    let start = if profile.time_nanos > 0 {
        profile.time_nanos
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
    };
    let from = start / NS;
    let end = start.saturating_add(profile.duration_nanos.max(0));
    let until = (end / NS).max(from + 1);
    let mut query = vec![
        ("name", name),
        ("from", from.to_string()),
        ("until", until.to_string()),
        ("format", "pprof".to_owned()),
    ];
    let string = |i: i64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| profile.string_table.get(i))
    };
    let unit = profile.period_type.as_ref().and_then(|t| string(t.unit));
    if profile.period > 0 && unit.is_some_and(|u| u == "nanoseconds") {
        query.push(("sampleRate", (NS / profile.period).max(1).to_string()));
    }
    Ok(query)
}

/// What became of one profile at one endpoint.
enum Outcome {
    Sent,
    Failed(Error),
    DeadlinePassed,
}

async fn endpoint_round(
    ep: Arc<Endpoint>,
    metrics: Arc<WriteMetrics>,
    items: Arc<Vec<Prepared>>,
    deadline: tokio::time::Instant,
) {
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut not_queued = 0usize;
    for index in 0..items.len() {
        let permit = if tokio::time::Instant::now() < deadline {
            tokio::time::timeout_at(deadline, Arc::clone(&limit).acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        let Some(permit) = permit else {
            for item in &items[index..] {
                metrics.dropped(&ep.labels, item.pprof.len());
            }
            not_queued = items.len() - index;
            break;
        };
        let (ep, metrics, items) = (Arc::clone(&ep), Arc::clone(&metrics), Arc::clone(&items));
        tasks.spawn(async move {
            let _permit = permit;
            let item = &items[index];
            let outcome = match tokio::time::timeout_at(deadline, send_with_retries(&ep, &metrics, item)).await {
                Ok(Ok(())) => Outcome::Sent,
                Ok(Err(e)) => Outcome::Failed(e),
                Err(_) => Outcome::DeadlinePassed,
            };
            match &outcome {
                Outcome::Sent => metrics.sent(&ep.labels, item.pprof.len()),
                Outcome::Failed(e) => {
                    tracing::debug!(endpoint = %ep.name, labels = %format_labels(&item.labels), "dropping a profile: {}", crate::error::Chain(e));
                    metrics.dropped(&ep.labels, item.pprof.len());
                }
                Outcome::DeadlinePassed => metrics.dropped(&ep.labels, item.pprof.len()),
            }
            outcome
        });
    }
    let (mut sent, mut failed, mut late) = (0usize, 0usize, 0usize);
    let mut last_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Outcome::Sent) => sent += 1,
            Ok(Outcome::Failed(e)) => {
                failed += 1;
                last_error = Some(e);
            }
            Ok(Outcome::DeadlinePassed) => late += 1,
            // A panic in a send task would be a bug; it has not counted its profile.
            Err(e) => tracing::error!(endpoint = %ep.name, "a push task failed: {e}"),
        }
    }
    if failed + late + not_queued > 0 {
        let last = last_error.map_or_else(String::new, |e| format!("; last error: {e}"));
        tracing::warn!(
            endpoint = %ep.name,
            sent,
            failed,
            deadline_passed = late,
            not_queued,
            "dropped {} of {} profiles this round ({failed} failed, {} not sent before the round's deadline){last}",
            failed + late + not_queued,
            items.len(),
            late + not_queued,
        );
    } else {
        tracing::debug!(endpoint = %ep.name, sent, "round sent");
    }
}

async fn send_with_retries(
    ep: &Endpoint,
    metrics: &WriteMetrics,
    item: &Prepared,
) -> Result<(), Error> {
    let cfg = &ep.config;
    let mut backoff = Backoff::new(cfg.min_backoff, cfg.max_backoff);
    let mut retries = 0u32;
    loop {
        let start = Instant::now();
        let result = send_once(ep, item).await;
        metrics
            .latency
            .get_or_create(&ep.labels)
            .observe(start.elapsed().as_secs_f64());
        let failure = match result {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        let exhausted = cfg.max_backoff_retries != 0 && retries >= cfg.max_backoff_retries;
        if !failure.retryable(cfg.retry_on_http_429) || exhausted {
            return Err(failure.into_error(ep));
        }
        retries += 1;
        metrics.retries.get_or_create(&ep.labels).inc();
        let delay = backoff.next_delay();
        tracing::debug!(
            endpoint = %ep.name,
            code = failure.code.as_str(),
            retry = retries,
            ?delay,
            "push failed, retrying: {}",
            failure.message
        );
        tokio::time::sleep(delay).await;
    }
}

async fn send_once(ep: &Endpoint, item: &Prepared) -> Result<(), Failure> {
    let cfg = &ep.config;
    let req = match cfg.api {
        Api::Push => {
            let body = item.push_body.clone().unwrap_or_default();
            ep.client
                .post(ep.target.clone())
                .header(header::CONTENT_TYPE, "application/proto")
                .header("Connect-Protocol-Version", "1")
                .header(
                    "Connect-Timeout-Ms",
                    cfg.remote_timeout.as_millis().to_string(),
                )
                .body(body)
        }
        Api::Ingest => {
            let query = match &item.ingest_query {
                Some(Ok(q)) => q,
                Some(Err(e)) => return Err(Failure::new(Code::InvalidArgument, None, e.clone())),
                None => {
                    return Err(Failure::new(
                        Code::Internal,
                        None,
                        "no ingest query prepared".into(),
                    ));
                }
            };
            let mut url = ep.target.clone();
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
            ep.client
                .post(url)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(item.pprof.clone())
        }
    };
    let req = ep
        .authorize(req)
        .header(header::ACCEPT_ENCODING, "gzip")
        .timeout(cfg.remote_timeout);
    let mut resp = req.send().await.map_err(Failure::transport)?;
    let status = resp.status().as_u16();
    let gzipped = resp
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() >= MAX_ERROR_BODY {
                    break;
                }
            }
            Ok(None) => break,
            // The status is what matters; a broken error body still has one.
            Err(e) if status != 200 => {
                tracing::debug!("could not read the error response body: {e}");
                break;
            }
            Err(e) => return Err(Failure::transport(e)),
        }
    }
    if status == 200 {
        return Ok(());
    }
    if gzipped {
        let mut plain = Vec::new();
        let decoder = flate2::read::GzDecoder::new(body.as_slice());
        if decoder
            .take(MAX_ERROR_BODY as u64)
            .read_to_end(&mut plain)
            .is_ok()
        {
            body = plain;
        }
    }
    Err(Failure::from_response(cfg.api, status, &body))
}

/// Connect error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    const ALL: [Code; 16] = [
        Code::Canceled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    fn parse(s: &str) -> Code {
        Code::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(Code::Unknown)
    }

    /// The code of a Connect response without a JSON error body.
    fn from_connect_status(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }

    /// The code of a legacy `/ingest` response without a JSON error code.
    fn from_ingest_status(status: u16) -> Code {
        match status {
            400 | 413 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            408 => Code::DeadlineExceeded,
            429 => Code::ResourceExhausted,
            500 => Code::Internal,
            502..=504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

/// Why one attempt failed.
#[derive(Debug)]
struct Failure {
    code: Code,
    /// The HTTP status, if the server answered.
    status: Option<u16>,
    message: String,
}

impl Failure {
    fn new(code: Code, status: Option<u16>, message: String) -> Failure {
        Failure {
            code,
            status,
            message,
        }
    }

    fn transport(e: reqwest::Error) -> Failure {
        let code = if e.is_timeout() {
            Code::DeadlineExceeded
        } else {
            Code::Unavailable
        };
        // reqwest's Display leaves out the cause ("connection refused"...).
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Failure::new(code, None, message)
    }

    fn from_response(api: Api, status: u16, body: &[u8]) -> Failure {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |name| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(serde_json::Value::as_str)
        };
        let code = match (field("code"), api) {
            (Some(code), _) => Code::parse(code),
            (None, Api::Push) => Code::from_connect_status(status),
            (None, Api::Ingest) => Code::from_ingest_status(status),
        };
        let message = match field("message") {
            Some(m) => m.to_owned(),
            None => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let short: String = text.chars().take(512).collect();
                if short.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {short}")
                }
            }
        };
        Failure::new(code, Some(status), message)
    }

    fn retryable(&self, retry_on_http_429: bool) -> bool {
        if self.status == Some(429) || self.code == Code::ResourceExhausted {
            return retry_on_http_429;
        }
        matches!(
            self.code,
            Code::DeadlineExceeded
                | Code::Unknown
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
                | Code::Aborted
        )
    }

    fn into_error(self, ep: &Endpoint) -> Error {
        Error::Push {
            endpoint: ep.name.clone(),
            code: self.code.as_str(),
            message: self.message,
        }
    }
}

/// Jittered exponential backoff, as dskit's: each delay is random in
/// `[lo, hi)`, starting at `[min, 2*min)`; both bounds double after each delay
/// until `hi` reaches `max`, and neither exceeds `max`.
#[derive(Debug)]
struct Backoff {
    lo: Duration,
    hi: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            lo: min,
            hi: double(min, max),
            max,
        }
    }

    fn next_delay(&mut self) -> Duration {
        if self.lo >= self.hi {
            return self.lo;
        }
        let delay = self.lo + random_below(self.hi - self.lo);
        if self.hi < self.max {
            self.lo = double(self.lo, self.max);
            self.hi = double(self.hi, self.max);
        }
        delay
    }
}

fn double(d: Duration, max: Duration) -> Duration {
    d.saturating_mul(2).min(max)
}

/// A uniformly random duration in `[0, range)` (`range` > 0). Jitter needs no
/// cryptographic quality; std's randomly keyed hasher is enough.
fn random_below(range: Duration) -> Duration {
    let nanos = u64::try_from(range.as_nanos()).unwrap_or(u64::MAX).max(1);
    let r = RandomState::new().hash_one(Instant::now());
    Duration::from_nanos(r % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn labels_are_filtered_sorted_and_overridden() {
        let got = process_labels(
            &l(&[
                ("service_name", "api"),
                ("__name__", "process_cpu"),
                ("__meta_process_pid", "1"),
                ("__delta__", "false"),
                ("env", "dev"),
            ]),
            &l(&[("env", "prod"), ("cluster", "eu"), ("__hidden", "x")]),
        )
        .unwrap();
        assert_eq!(
            got,
            l(&[
                ("__delta__", "false"),
                ("__name__", "process_cpu"),
                ("cluster", "eu"),
                ("env", "prod"),
                ("service_name", "api"),
            ])
        );
    }

    #[test]
    fn bad_label_sets_are_rejected() {
        let reason = |labels: &[(&str, &str)]| match process_labels(&l(labels), &[]) {
            Err(Error::InvalidLabels { reason, .. }) => reason,
            other => panic!("{labels:?} should be rejected, got {other:?}"),
        };
        assert!(reason(&[]).contains("empty"));
        assert!(reason(&[("__meta_x", "1")]).contains("empty"));
        assert!(reason(&[("a", "1"), ("a", "2")]).contains("more than once"));
        assert!(reason(&[("service-name", "x")]).contains("invalid"));
        assert!(reason(&[("", "x")]).contains("invalid"));
        assert!(process_labels(&l(&[("a.b_C9", "v")]), &[]).is_ok());
    }

    #[test]
    fn backoff_follows_dskit_bounds() {
        let ms = Duration::from_millis;
        for _ in 0..50 {
            let mut b = Backoff::new(ms(500), ms(3000));
            assert_eq!(Backoff::new(ms(7), ms(7)).next_delay(), ms(7));
            // Once the upper bound reaches max, the range stops moving.
            let bounds = [
                (500, 1000),
                (1000, 2000),
                (2000, 3000),
                (2000, 3000),
                (2000, 3000),
            ];
            for (lo, hi) in bounds {
                let d = b.next_delay();
                assert!(d >= ms(lo) && d < ms(hi), "{d:?} not in [{lo}, {hi}) ms");
            }
        }
    }

    #[test]
    fn responses_map_to_codes() {
        let f = Failure::from_response(
            Api::Push,
            400,
            br#"{"code":"invalid_argument","message":"bad labels"}"#,
        );
        assert_eq!(
            (f.code, f.message.as_str()),
            (Code::InvalidArgument, "bad labels")
        );
        assert!(!f.retryable(true));
        for (status, code) in [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (429, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (418, Code::Unknown),
        ] {
            assert_eq!(
                Failure::from_response(Api::Push, status, b"oops").code,
                code,
                "{status}"
            );
        }
        let too_many = Failure::from_response(Api::Push, 429, b"");
        assert!(too_many.retryable(true) && !too_many.retryable(false));
        let exhausted = Failure::from_response(Api::Push, 400, br#"{"code":"resource_exhausted"}"#);
        assert!(exhausted.retryable(true) && !exhausted.retryable(false));
        assert!(!Failure::from_response(Api::Push, 401, b"").retryable(true));
        assert!(Failure::from_response(Api::Push, 503, b"").retryable(false));
        assert_eq!(
            Failure::from_response(Api::Ingest, 413, b"").code,
            Code::InvalidArgument
        );
        assert_eq!(
            Failure::from_response(Api::Ingest, 408, b"").code,
            Code::DeadlineExceeded
        );
        assert_eq!(
            Failure::from_response(Api::Ingest, 422, b"{\"code\":3}").code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn endpoint_configs_are_checked() {
        let bad = |f: fn(&mut EndpointConfig)| {
            let mut c = EndpointConfig::new("http://127.0.0.1:1/");
            f(&mut c);
            Writer::new(vec![c], vec![], Arc::default()).unwrap_err()
        };
        assert!(matches!(
            bad(|c| c.url = "ftp://x".into()),
            Error::Endpoint { .. }
        ));
        assert!(matches!(
            bad(|c| c.url = "not a url".into()),
            Error::Endpoint { .. }
        ));
        assert!(matches!(
            bad(|c| {
                c.basic_auth = Some(("u".into(), "p".into()));
                c.bearer_token = Some("t".into());
            }),
            Error::Endpoint { .. }
        ));
        assert!(matches!(
            bad(|c| c.headers = vec![("bad header".into(), "v".into())]),
            Error::Endpoint { .. }
        ));
        let w = Writer::new(
            vec![EndpointConfig::new("http://user:secret@127.0.0.1:1/base/")],
            vec![],
            Arc::default(),
        )
        .unwrap();
        assert_eq!(w.endpoint_names(), ["http://127.0.0.1:1/base"]);
    }
}
