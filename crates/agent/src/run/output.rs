//! Where a round's profiles go: every `[[write.endpoint]]`, or the local sink.

use std::path::Path;
use std::time::{Instant, SystemTime};

use ferroscope_pprof::push::{EndpointConfig, SeriesProfile, Writer};
use ferroscope_pprof::sink::LocalSink;

use super::round::Built;
use crate::Error;
use crate::config::{Api, Endpoint};
use crate::metrics::AgentMetrics;

/// Converts a configured endpoint to the push client's form, reading password and token
/// files now.
pub fn endpoint_config(e: &Endpoint) -> Result<EndpointConfig, Error> {
    let read_secret = |path: &Path| -> Result<String, Error> {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|source| Error::Output {
                path: path.to_owned(),
                source,
            })
    };
    let mut c = EndpointConfig::new(e.url.clone());
    if let Some(auth) = &e.basic_auth {
        let password = match (&auth.password, &auth.password_file) {
            (Some(p), _) => p.expose().to_owned(),
            (None, Some(f)) => read_secret(f)?,
            (None, None) => String::new(),
        };
        c.basic_auth = Some((auth.username.clone(), password));
    }
    c.bearer_token = match (&e.bearer_token, &e.bearer_token_file) {
        (Some(t), _) => Some(t.expose().to_owned()),
        (None, Some(f)) => Some(read_secret(f)?),
        (None, None) => None,
    };
    c.headers = e
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    c.tenant_id = e.tenant_id.clone();
    c.remote_timeout = e.remote_timeout;
    c.min_backoff = e.min_backoff_period;
    c.max_backoff = e.max_backoff_period;
    c.max_backoff_retries = e.max_backoff_retries;
    c.retry_on_http_429 = e.retry_on_http_429;
    c.api = match e.api {
        Api::Push => ferroscope_pprof::push::Api::Push,
        Api::Ingest => ferroscope_pprof::push::Api::Ingest,
    };
    Ok(c)
}

/// Where finished profiles go.
pub(super) enum Output {
    Push(Writer),
    Local(LocalSink),
}

impl Output {
    /// Hands a round over: a send round in the background (dropped, and counted, while the
    /// previous one still runs), or files written now. `budget` bounds the send round.
    pub(super) fn deliver(
        &self,
        profiles: Vec<Built>,
        now: SystemTime,
        budget: std::time::Duration,
        runtime: &tokio::runtime::Runtime,
        round: &mut Option<tokio::task::JoinHandle<()>>,
        metrics: &AgentMetrics,
    ) {
        match self {
            Output::Push(writer) => {
                if round.as_ref().is_some_and(|r| !r.is_finished()) {
                    // The previous round still runs: its deadline is near; drop this one.
                    metrics.pprofs_dropped.inc_by(profiles.len() as u64);
                    tracing::warn!(
                        dropped = profiles.len(),
                        "previous send round still running; profiles dropped"
                    );
                } else {
                    let profiles: Vec<SeriesProfile> =
                        profiles.into_iter().map(|b| b.profile).collect();
                    let writer = writer.clone();
                    let deadline = Instant::now() + budget;
                    *round = Some(
                        runtime.spawn(async move { writer.send_round(profiles, deadline).await }),
                    );
                }
            }
            Output::Local(sink) => {
                for b in &profiles {
                    // Each profile type in a directory of its own: `<service>`, then
                    // `<service>-offcpu`, `<service>-uprobe`.
                    let dir = match b.kind.file_infix() {
                        Some(infix) => format!("{}-{infix}", b.service),
                        None => b.service.clone(),
                    };
                    if let Err(e) = sink.write(&dir, b.pid, now, &b.profile.pprof_gzip) {
                        metrics.pprofs_dropped.inc();
                        tracing::warn!(
                            "cannot write a profile locally: {}",
                            crate::error::Chain(&e)
                        );
                    }
                }
            }
        }
    }
}
