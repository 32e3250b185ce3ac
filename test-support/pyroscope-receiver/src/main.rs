//! `ferroscope-test-receiver`: a Pyroscope-compatible receiver for tests.
//!
//! ```text
//! ferroscope-test-receiver [--listen 127.0.0.1:4040] [--faults 503,200,hang:15s,down:3]
//!                          [--delay 50ms] [--output FILE|-]
//! ```
//! `FERROSCOPE_RECEIVER_FAULTS` is used when `--faults` is not given. Records
//! go to stdout as JSON lines unless `--output` says otherwise.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use ferroscope_test_receiver::{Config, parse_duration, parse_faults, serve};

const USAGE: &str = "usage: ferroscope-test-receiver [--listen ADDR] [--port N] \
                     [--faults SPEC] [--delay DURATION] [--output FILE|-]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut listen = "127.0.0.1:4040".to_owned();
    let mut config = Config {
        output: Some(PathBuf::from("-")),
        ..Config::default()
    };
    let mut faults = std::env::var("FERROSCOPE_RECEIVER_FAULTS").ok();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--port" => listen = format!("127.0.0.1:{}", value()?),
            "--faults" => faults = Some(value()?),
            "--delay" => config.delay = parse_duration(&value()?)?,
            "--output" => config.output = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                // The usage is the output asked for; nothing to do if stderr is gone.
                let _ = writeln!(std::io::stderr(), "{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if let Some(spec) = faults {
        config.faults = parse_faults(&spec)?;
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("could not listen on {listen}"))?;
    tracing::info!("listening on {}", listener.local_addr()?);
    serve(listener, config).await
}
