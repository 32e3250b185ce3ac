//! The push client against the test receiver, in-process on 127.0.0.1.
//!
//! Backoffs and timeouts are tiny so each test takes well under a few seconds.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroscope_pprof::ProfileBuilder;
use ferroscope_pprof::push::{
    Api, EndpointConfig, MAX_IN_FLIGHT, SeriesProfile, WriteMetrics, Writer,
};
use ferroscope_test_receiver::{Config, Receiver, parse_faults};

const TIME: i64 = 1_700_000_000_123_000_000;

/// A CPU profile (19 Hz) with one sample of `main -> work`.
fn pprof() -> Vec<u8> {
    let mut b = ProfileBuilder::cpu(19);
    let work = common::loc(&mut b, None, 0x2000, "work");
    let main = common::loc(&mut b, None, 0x1000, "main");
    let period = b.period();
    b.add_sample(&[work, main], &[2 * period], &[]);
    b.set_time_nanos(TIME);
    b.set_duration_nanos(10_000_000_000);
    ferroscope_pprof::encode_gzip(&b.build())
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn series(pairs: &[(&str, &str)]) -> SeriesProfile {
    SeriesProfile {
        labels: labels(pairs),
        pprof_gzip: pprof(),
    }
}

fn app() -> SeriesProfile {
    series(&[("service_name", "app"), ("__name__", "process_cpu")])
}

/// An endpoint with test-sized timeouts and backoffs.
fn endpoint(url: &str) -> EndpointConfig {
    EndpointConfig {
        remote_timeout: Duration::from_secs(1),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        ..EndpointConfig::new(url)
    }
}

async fn receiver(faults: &str) -> (String, Receiver) {
    receiver_with(Config {
        faults: parse_faults(faults).unwrap(),
        ..Config::default()
    })
    .await
}

async fn receiver_with(config: Config) -> (String, Receiver) {
    let (addr, r) = ferroscope_test_receiver::spawn(config)
        .await
        .unwrap_or_else(|e| panic!("could not start the receiver: {e:#}"));
    (format!("http://{addr}"), r)
}

fn writer(
    endpoints: Vec<EndpointConfig>,
    external: &[(&str, &str)],
) -> (Writer, Arc<WriteMetrics>) {
    let metrics = Arc::new(WriteMetrics::new());
    let w = Writer::new(endpoints, labels(external), Arc::clone(&metrics))
        .unwrap_or_else(|e| panic!("Writer::new failed: {e}"));
    (w, metrics)
}

fn in_secs(s: f64) -> Instant {
    Instant::now() + Duration::from_secs_f64(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_arrives_with_headers_and_processed_labels() {
    let (url, rx) = receiver("").await;
    let (w, m) = writer(
        vec![EndpointConfig {
            basic_auth: Some(("user".into(), "pass".into())),
            tenant_id: Some("team-a".into()),
            headers: vec![
                ("X-Extra".into(), "1".into()),
                ("Content-Type".into(), "text/plain".into()),
            ],
            ..endpoint(&format!("{url}/"))
        }],
        &[("env", "prod"), ("cluster", "eu")],
    );
    let p = series(&[
        ("service_name", "app"),
        ("__name__", "process_cpu"),
        ("__meta_process_pid", "12"),
        ("env", "dev"),
        ("pod", "p-1"),
    ]);
    let size = p.pprof_gzip.len() as u64;
    w.send_round(vec![p], in_secs(5.0)).await;

    let got = rx.accepted();
    assert_eq!(got.len(), 1, "{got:#?}");
    let r = &got[0];
    assert_eq!(
        (r.api.as_str(), r.path.as_str()),
        ("push", "/push.v1.PusherService/Push")
    );
    let h = |name: &str| r.headers.get(name).map(String::as_str);
    assert_eq!(
        h("content-type"),
        Some("application/proto"),
        "user headers cannot replace it"
    );
    assert_eq!(h("connect-protocol-version"), Some("1"));
    assert_eq!(h("connect-timeout-ms"), Some("1000"));
    assert_eq!(h("accept-encoding"), Some("gzip"));
    assert_eq!(h("content-encoding"), None, "the body is not compressed");
    assert_eq!(h("authorization"), Some("Basic dXNlcjpwYXNz"));
    assert_eq!(h("x-scope-orgid"), Some("team-a"));
    assert_eq!(h("x-extra"), Some("1"));
    assert!(
        h("user-agent").unwrap().starts_with("ferroscope/"),
        "{:?}",
        h("user-agent")
    );

    assert_eq!(r.series.len(), 1);
    let s = &r.series[0];
    assert_eq!(
        s.labels,
        labels(&[
            ("__name__", "process_cpu"),
            ("cluster", "eu"),
            ("env", "prod"),
            ("pod", "p-1"),
            ("service_name", "app"),
        ])
    );
    assert_eq!(s.profiles.len(), 1);
    let prof = &s.profiles[0];
    assert_eq!(prof.sample_types, ["cpu/nanoseconds"]);
    assert_eq!(
        (prof.period_type.as_str(), prof.period),
        ("cpu/nanoseconds", 52_631_578)
    );
    assert_eq!(prof.samples, 1);
    assert_eq!(prof.time_nanos, TIME);
    assert_eq!(
        prof.stacks,
        [(vec!["main".to_owned(), "work".to_owned()], 2 * 52_631_578)]
    );

    assert_eq!(w.endpoint_names(), std::slice::from_ref(&url));
    assert_eq!((m.sent_profiles(&url), m.sent_bytes(&url)), (1, size));
    assert_eq!((m.dropped_profiles(&url), m.retries(&url)), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_sent() {
    let (url, rx) = receiver("").await;
    let (w, _) = writer(
        vec![EndpointConfig {
            bearer_token: Some("s3cret".into()),
            ..endpoint(&url)
        }],
        &[],
    );
    w.send_round(vec![app()], in_secs(5.0)).await;
    let got = rx.accepted();
    assert_eq!(
        got[0].headers.get("authorization").map(String::as_str),
        Some("Bearer s3cret")
    );
    assert!(!got[0].headers.contains_key("x-scope-orgid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried() {
    let (url, rx) = receiver("503").await;
    let (w, m) = writer(vec![endpoint(&url)], &[]);
    w.send_round(vec![app()], in_secs(5.0)).await;
    assert_eq!(rx.requests(), 2);
    assert_eq!(rx.accepted().len(), 1);
    assert_eq!(
        (
            m.sent_profiles(&url),
            m.retries(&url),
            m.dropped_profiles(&url)
        ),
        (1, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_argument_is_not_retried_and_is_dropped() {
    let (url, rx) = receiver("400:invalid_argument").await;
    let (w, m) = writer(vec![endpoint(&url)], &[]);
    let p = app();
    let size = p.pprof_gzip.len() as u64;
    w.send_round(vec![p], in_secs(5.0)).await;
    assert_eq!(rx.requests(), 1);
    assert_eq!((m.sent_profiles(&url), m.retries(&url)), (0, 0));
    assert_eq!((m.dropped_profiles(&url), m.dropped_bytes(&url)), (1, size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_is_retried_only_when_enabled() {
    let (retry_url, retry_rx) = receiver("429").await;
    let (no_retry_url, no_retry_rx) = receiver("429").await;
    let (w, m) = writer(
        vec![
            endpoint(&retry_url),
            EndpointConfig {
                retry_on_http_429: false,
                ..endpoint(&no_retry_url)
            },
        ],
        &[],
    );
    w.send_round(vec![app()], in_secs(5.0)).await;
    assert_eq!(
        (
            retry_rx.requests(),
            m.retries(&retry_url),
            m.sent_profiles(&retry_url)
        ),
        (2, 1, 1)
    );
    assert_eq!(
        (
            no_retry_rx.requests(),
            m.retries(&no_retry_url),
            m.dropped_profiles(&no_retry_url)
        ),
        (1, 0, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_is_retried_after_the_timeout() {
    let (url, rx) = receiver("hang:10s").await;
    let (w, m) = writer(
        vec![EndpointConfig {
            remote_timeout: Duration::from_millis(200),
            ..endpoint(&url)
        }],
        &[],
    );
    let start = Instant::now();
    w.send_round(vec![app()], in_secs(5.0)).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!((m.sent_profiles(&url), m.retries(&url)), (1, 1));
    assert_eq!(rx.accepted().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_keeps_hanging_is_dropped_at_the_deadline() {
    let (url, _rx) = receiver(&["hang:10s"; 50].join(",")).await;
    let (w, m) = writer(
        vec![EndpointConfig {
            remote_timeout: Duration::from_millis(150),
            max_backoff_retries: 0,
            ..endpoint(&url)
        }],
        &[],
    );
    let start = Instant::now();
    w.send_round(vec![app(), app()], in_secs(0.8)).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(750) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!((m.sent_profiles(&url), m.dropped_profiles(&url)), (0, 2));
    assert!(
        m.retries(&url) >= 4,
        "each profile retried at least twice: {}",
        m.retries(&url)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_after_max_backoff_retries() {
    let (url, rx) = receiver("503,503,503,503").await;
    let (w, m) = writer(
        vec![EndpointConfig {
            max_backoff_retries: 2,
            ..endpoint(&url)
        }],
        &[],
    );
    w.send_round(vec![app()], in_secs(5.0)).await;
    assert_eq!(rx.requests(), 3);
    assert_eq!((m.retries(&url), m.dropped_profiles(&url)), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried() {
    let (url, rx) = receiver("down:2").await;
    let (w, m) = writer(vec![endpoint(&url)], &[]);
    w.send_round(vec![app()], in_secs(5.0)).await;
    assert_eq!(rx.requests(), 3);
    assert_eq!((m.sent_profiles(&url), m.retries(&url)), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_endpoint_does_not_hold_back_a_healthy_one() {
    // A port nobody listens on: connections are refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (url, rx) = receiver("").await;
    let (w, m) = writer(
        vec![
            EndpointConfig {
                max_backoff_retries: 0,
                ..endpoint(&dead)
            },
            endpoint(&url),
        ],
        &[],
    );
    let profiles: Vec<_> = (0..5).map(|_| app()).collect();
    let bytes: u64 = profiles.iter().map(|p| p.pprof_gzip.len() as u64).sum();
    let start = Instant::now();
    w.send_round(profiles, in_secs(0.6)).await;
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1200), "{took:?}");
    assert_eq!(rx.accepted().len(), 5);
    assert_eq!((m.sent_profiles(&url), m.dropped_profiles(&url)), (5, 0));
    assert_eq!((m.sent_profiles(&dead), m.dropped_profiles(&dead)), (0, 5));
    assert_eq!(m.dropped_bytes(&dead), bytes);
    assert!(m.retries(&dead) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_32_requests_are_in_flight() {
    let (url, rx) = receiver_with(Config {
        delay: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let (w, m) = writer(vec![endpoint(&url)], &[]);
    let profiles: Vec<_> = (0..100).map(|_| app()).collect();
    w.send_round(profiles, in_secs(10.0)).await;
    assert_eq!(m.sent_profiles(&url), 100);
    let max = rx.max_in_flight();
    assert!(max <= MAX_IN_FLIGHT, "{max} requests in flight");
    assert!(
        max >= MAX_IN_FLIGHT / 2,
        "only {max} requests in flight: the limit is not used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_deadline_drops_everything() {
    let (url, rx) = receiver("").await;
    let (w, m) = writer(vec![endpoint(&url)], &[]);
    w.send_round(vec![app(), app(), app()], Instant::now())
        .await;
    assert_eq!(rx.requests(), 0);
    assert_eq!(m.dropped_profiles(&url), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_label_sets_are_dropped_and_counted() {
    let (url, rx) = receiver("").await;
    let (w, m) = writer(vec![endpoint(&url)], &[]);
    let profiles = vec![
        series(&[("service_name", "ok"), ("__name__", "process_cpu")]),
        series(&[("service_name", "a"), ("bad-name", "x")]),
        series(&[("__meta_only", "x")]),
        series(&[]),
        series(&[("service_name", "a"), ("service_name", "b")]),
    ];
    w.send_round(profiles, in_secs(5.0)).await;
    let got = rx.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].series[0].labels,
        labels(&[("__name__", "process_cpu"), ("service_name", "ok")])
    );
    assert_eq!((m.sent_profiles(&url), m.dropped_profiles(&url)), (1, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sends_the_query_string_and_raw_body() {
    let (url, rx) = receiver("").await;
    let (w, m) = writer(
        vec![EndpointConfig {
            api: Api::Ingest,
            tenant_id: Some("t".into()),
            ..endpoint(&url)
        }],
        &[("region", "eu west")],
    );
    let p = series(&[
        ("service_name", "api"),
        ("__name__", "process_cpu"),
        ("env", "prod"),
    ]);
    let body = p.pprof_gzip.clone();
    w.send_round(vec![p], in_secs(5.0)).await;
    let got = rx.accepted();
    assert_eq!(got.len(), 1, "{:#?}", rx.records());
    let r = &got[0];
    assert_eq!((r.api.as_str(), r.path.as_str()), ("ingest", "/ingest"));
    let param = |k: &str| r.params.get(k).map(String::as_str);
    assert_eq!(param("name"), Some("api{env=prod,region=eu west}"));
    assert_eq!(param("from"), Some("1700000000"));
    assert_eq!(param("until"), Some("1700000010"));
    assert_eq!(param("format"), Some("pprof"));
    assert_eq!(param("sampleRate"), Some("19"));
    assert_eq!(
        r.headers.get("x-scope-orgid").map(String::as_str),
        Some("t")
    );
    let prof = &r.series[0].profiles[0];
    assert_eq!(prof.raw_bytes, body.len());
    assert_eq!(prof.stacks[0].0, ["main", "work"]);
    assert_eq!(m.sent_profiles(&url), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_errors_follow_the_status() {
    let (url, rx) = receiver("422:invalid_argument,429,200").await;
    let (w, m) = writer(
        vec![EndpointConfig {
            api: Api::Ingest,
            ..endpoint(&url)
        }],
        &[],
    );
    // 422: dropped at once; 429: retried, then accepted.
    w.send_round(vec![app()], in_secs(5.0)).await;
    w.send_round(vec![app()], in_secs(5.0)).await;
    assert_eq!(rx.requests(), 3);
    assert_eq!(
        (
            m.sent_profiles(&url),
            m.dropped_profiles(&url),
            m.retries(&url)
        ),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_register_with_the_reference_names() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(WriteMetrics::register(&mut registry));
    let (url, _rx) = receiver("503").await;
    let w = Writer::new(vec![endpoint(&url)], vec![], Arc::clone(&metrics)).unwrap();
    w.send_round(vec![app()], in_secs(5.0)).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for name in [
        "pyroscope_write_sent_bytes_total",
        "pyroscope_write_dropped_bytes_total",
        "pyroscope_write_sent_profiles_total",
        "pyroscope_write_dropped_profiles_total",
        "pyroscope_write_retries_total",
        "pyroscope_write_latency_count",
    ] {
        assert!(
            text.contains(&format!("{name}{{endpoint=\"{url}\"")),
            "{name} missing from:\n{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "pyroscope_write_retries_total{{endpoint=\"{url}\"}} 1\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pyroscope_write_dropped_profiles_total{{endpoint=\"{url}\"}} 0\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pyroscope_write_latency_count{{endpoint=\"{url}\"}} 2"
        )),
        "{text}"
    );
}
