//! A stand-in for the Kubernetes API server that answers from recorded responses: no API
//! server installs on this machine (no kind, k3s or kube-apiserver from the registries the
//! tests may use), so discovery tests replay what one sends.
//!
//! [`ApiServer::start`] listens on 127.0.0.1 (plain HTTP, or TLS with a certificate made by
//! [`self_signed`]) and answers each request with what the test's handler returns for it: a
//! JSON body with a status, or a watch stream (newline-delimited watch events, written one
//! chunk at a time, then held open for a while before the stream ends, as a real watch ends
//! at its timeout). Every request is recorded, with its headers, for the test to check.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::exec::{exec, minutes};
use crate::require::{Unavailable, find_tool};

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, ...
    pub method: String,
    /// The path and query, e.g. `/api/v1/pods?fieldSelector=...`.
    pub target: String,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The value of query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
    }

    /// Whether this is a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        matches!(self.query("watch").as_deref(), Some("true" | "1"))
    }

    /// The value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A JSON body (a list, an object, or a `Status` for an error) with an HTTP status.
    Json {
        /// The HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
    /// A watch: each event (one JSON object: `{"type":"ADDED","object":{...}}`) written as
    /// its own chunk, then the connection held for `hold` before the stream ends.
    Watch {
        /// The events, in order.
        events: Vec<String>,
        /// How long the stream stays open after the last event.
        hold: Duration,
    },
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// The replaying server; stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    tls: bool,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Serves on a free port of 127.0.0.1, with TLS when `tls` gives a certificate and key
    /// (PEM files), answering every request with `handler`.
    pub fn start(
        tls: Option<&Certificate>,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let tls_config = tls.map(|c| Arc::new(server_config(c)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let requests = requests.clone();
            let stop = stop.clone();
            listener
                .set_nonblocking(true)
                .unwrap_or_else(|e| panic!("{e}"));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let handler = handler.clone();
                            let requests = requests.clone();
                            let tls_config = tls_config.clone();
                            let stop = stop.clone();
                            std::thread::spawn(move || {
                                serve(stream, tls_config, &*handler, &requests, &stop)
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        ApiServer {
            addr,
            tls: tls.is_some(),
            requests,
            stop,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` or `http://...`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes a kubeconfig for this server (plain HTTP; no credentials) to `path`.
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: replay\n  cluster:\n    server: {}\ncontexts:\n- name: replay\n  context:\n    cluster: replay\n    user: replay\ncurrent-context: replay\nusers:\n- name: replay\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A certificate and key (PEM files) for `127.0.0.1` and `localhost`, signed by a CA whose
/// certificate is `ca`.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The CA's certificate (what a client trusts: the service account's `ca.crt`).
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

/// Makes a CA and a server certificate in `dir` with the `openssl` tool.
pub fn self_signed(dir: &Path) -> Result<Certificate, Unavailable> {
    let openssl = find_tool("openssl")?;
    let p = |n: &str| dir.join(n);
    exec(
        Command::new(&openssl)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.crt"))
            .args(["-subj", "/CN=ferroscope-test-ca"]),
        minutes(1),
    )?;
    exec(
        Command::new(&openssl)
            .args(["req", "-newkey", "rsa:2048", "-nodes"])
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr"))
            .args(["-subj", "/CN=kubernetes"]),
        minutes(1),
    )?;
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| Unavailable(format!("cannot write ext.cnf: {e}")))?;
    exec(
        Command::new(&openssl)
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.crt"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("server.crt")),
        minutes(1),
    )?;
    Ok(Certificate {
        ca: p("ca.crt"),
        cert: p("server.crt"),
        key: p("server.key"),
    })
}

fn server_config(c: &Certificate) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .unwrap_or_else(|e| panic!("{}: {e}", c.cert.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", c.cert.display()));
    let key =
        PrivateKeyDer::from_pem_file(&c.key).unwrap_or_else(|e| panic!("{}: {e}", c.key.display()));
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn serve(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: &Handler,
    requests: &Mutex<Vec<Request>>,
    stop: &AtomicBool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    match tls {
        None => {
            let Ok(reader) = stream.try_clone() else {
                return;
            };
            exchange(BufReader::new(reader), stream, handler, requests, stop);
        }
        Some(config) => {
            let Ok(conn) = rustls::ServerConnection::new(config) else {
                return;
            };
            let tls = Arc::new(Mutex::new(rustls::StreamOwned::new(conn, stream)));
            exchange(
                BufReader::new(Shared(tls.clone())),
                Shared(tls),
                handler,
                requests,
                stop,
            );
        }
    }
}

/// A TLS stream shared by the reading and the writing half.
struct Shared(Arc<Mutex<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>>);

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).read(buf)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// Answers requests on one connection until the client closes it or a watch ends.
fn exchange(
    mut reader: impl BufRead,
    mut writer: impl Write,
    handler: &Handler,
    requests: &Mutex<Vec<Request>>,
    stop: &AtomicBool,
) {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let request = Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
        };
        requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request.clone());
        match handler(&request) {
            Reply::Json { status, body } => {
                let head = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-cache, private\r\n\r\n",
                    reason(status),
                    body.len()
                );
                if writer.write_all(head.as_bytes()).is_err()
                    || writer.write_all(body.as_bytes()).is_err()
                    || writer.flush().is_err()
                {
                    return;
                }
            }
            Reply::Watch { events, hold } => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache, private\r\n\r\n";
                if writer.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for event in events {
                    let chunk = format!("{event}\n");
                    let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                    if writer.write_all(framed.as_bytes()).is_err() || writer.flush().is_err() {
                        return;
                    }
                }
                let end = std::time::Instant::now() + hold;
                while std::time::Instant::now() < end && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = writer.write_all(b"0\r\n\r\n");
                let _ = writer.flush();
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
