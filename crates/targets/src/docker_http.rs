//! One HTTP/1.1 `GET` to the Docker daemon over its unix socket or TCP, with hyper: a
//! connection per request (a discovery asks twice a refresh), a bounded body.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::Error;
use crate::docker::{DockerHost, MAX_RESPONSE_BYTES};

/// `GET path` on `host`; the body of a 2xx answer, else the daemon's error message.
pub(crate) async fn get(host: &DockerHost, path: &str) -> Result<Vec<u8>, Error> {
    let connect_error = |source| Error::DockerConnect {
        host: host.to_string(),
        source,
    };
    let http_error = |source| Error::DockerHttp {
        host: host.to_string(),
        path: path.to_owned(),
        source,
    };
    let (authority, sender) = match host {
        DockerHost::Unix(socket) => {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(connect_error)?;
            (
                "localhost".to_owned(),
                handshake(stream).await.map_err(http_error)?,
            )
        }
        DockerHost::Tcp(address) => {
            let stream = tokio::net::TcpStream::connect(address.as_str())
                .await
                .map_err(connect_error)?;
            (
                address.clone(),
                handshake(stream).await.map_err(http_error)?,
            )
        }
    };
    let mut sender = sender;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("ferroscope/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Error::DockerResponse {
            host: host.to_string(),
            problem: format!("cannot build the request for {path}: {e}"),
        })?;
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| Error::DockerResponse {
            host: host.to_string(),
            problem: format!(
                "reading the answer to {path} failed ({e}; answers are read up to {MAX_RESPONSE_BYTES} bytes)"
            ),
        })?
        .to_bytes();
    if !status.is_success() {
        // Docker answers {"message": "..."}; podman adds "cause" and "response".
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
        return Err(Error::DockerStatus {
            host: host.to_string(),
            path: path.to_owned(),
            status: status.as_u16(),
            message: message.trim().to_owned(),
        });
    }
    Ok(body.to_vec())
}

async fn handshake<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("Docker API connection ended: {e}");
        }
    });
    Ok(sender)
}
