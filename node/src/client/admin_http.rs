//! [`AdminClient`]: the `metro` CLI's HTTP/1.1 client for the admin API.
//!
//! Model: one request per connection (`Connection: close`), spoken by
//! hyper's HTTP/1 connection over a plain [`TcpStream`]; JSON bodies. The
//! contract: every request ends within the client's deadline
//! ([`ADMIN_REQUEST_TIMEOUT_MS`] unless set), and a response body is read only up to
//! [`ADMIN_RESPONSE_BYTES_MAX`] bytes — a longer one fails with
//! [`ClientError::Protocol`] instead of growing without bound. The API is
//! local or on a management network, so there is no TLS and no pooling.

use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::admin::api::ApiError;
use crate::limits::{ADMIN_REQUEST_TIMEOUT_MS, ADMIN_RESPONSE_BYTES_MAX};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad admin URL {0:?}: expected http://HOST:PORT")]
    BadUrl(String),
    #[error("cannot reach the admin API at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("admin API at {url}: {reason}")]
    Protocol { url: String, reason: String },
    #[error("admin API at {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// The API answered with an error.
    #[error("{} ({status} {})", .error.message, .error.error)]
    Api { status: u16, error: ApiError },
}

/// A client of one node's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    url: String,
    authority: String,
    timeout: Duration,
}

/// A raw answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl AdminClient {
    /// A client of `url` (`http://HOST:PORT`, a trailing `/` allowed).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(url.to_owned());
        let rest = url.trim().strip_prefix("http://").ok_or_else(bad)?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(bad());
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok() && !port.contains(']'));
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            url: url.trim().trim_end_matches('/').to_owned(),
            authority,
            timeout: Duration::from_millis(ADMIN_REQUEST_TIMEOUT_MS),
        })
    }

    /// The same client with another deadline per request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One request; any status is returned as is.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<RawResponse, ClientError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                url: self.url.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// Connects, sends `request`, reads the bounded answer. The connection
    /// is driven alongside the exchange and dropped (closed) with it.
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<RawResponse, ClientError> {
        let request = self.request(method, path, body)?;
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.unreachable(&e))?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(describe(&e)))?;
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.protocol(describe(&e)))?;
            self.read(response).await
        };
        // A failed connection also fails the exchange (hyper hands the error
        // to the pending request or body), so only the exchange decides.
        let drive = async {
            let _ = connection.await;
            std::future::pending::<std::convert::Infallible>().await
        };
        tokio::select! {
            answer = exchange => answer,
            never = drive => match never {},
        }
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| self.protocol(format!("bad request method {method:?}")))?;
        let body = body.unwrap_or_default();
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONNECTION, "close")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("metro/", env!("CARGO_PKG_VERSION")),
            );
        if !body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| self.protocol(format!("bad request {path:?}: {e}")))
    }

    /// Status, content type and the body, read up to [`ADMIN_RESPONSE_BYTES_MAX`].
    async fn read(
        &self,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<RawResponse, ClientError> {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(response.into_body(), ADMIN_RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    self.protocol(format!(
                        "response body over {ADMIN_RESPONSE_BYTES_MAX} bytes, the client's limit"
                    ))
                } else {
                    self.protocol(format!("reading the response: {}", describe(&*e)))
                }
            })?;
        Ok(RawResponse {
            status,
            content_type,
            body: body.to_bytes().to_vec(),
        })
    }

    fn unreachable(&self, error: &std::io::Error) -> ClientError {
        let reason = match error.kind() {
            std::io::ErrorKind::ConnectionRefused => format!(
                "connection to {} refused: is the node running, with its admin API listening there?",
                self.authority
            ),
            _ => format!("connecting to {}: {error}", self.authority),
        };
        ClientError::Connect {
            url: self.url.clone(),
            reason,
        }
    }

    fn protocol(&self, reason: String) -> ClientError {
        ClientError::Protocol {
            url: self.url.clone(),
            reason,
        }
    }

    /// A JSON request: a 2xx body decoded as `T`, anything else an error
    /// (an [`ApiError`] body when the server sent one).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| self.protocol(format!("encoding the request: {e}")))?;
        let response = self.raw(method, path, body.as_deref()).await?;
        if !(200..300).contains(&response.status) {
            let error =
                serde_json::from_slice::<ApiError>(&response.body).unwrap_or_else(|_| ApiError {
                    error: "http".into(),
                    message: String::from_utf8_lossy(&response.body).trim().to_owned(),
                });
            return Err(ClientError::Api {
                status: response.status,
                error,
            });
        }
        serde_json::from_slice(&response.body)
            .map_err(|e| self.protocol(format!("undecodable answer: {e}")))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(method::GET, path, None::<&()>).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        self.call(method::POST, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(method::DELETE, path, None::<&()>).await
    }
}

/// HTTP method names.
pub mod method {
    pub const GET: &str = "GET";
    pub const POST: &str = "POST";
    pub const DELETE: &str = "DELETE";
}

/// `error` and its causes, outermost first (hyper's own messages are terse).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn urls_parse() {
        assert!(AdminClient::new("http://127.0.0.1:9000").is_ok());
        assert_eq!(
            AdminClient::new("http://localhost/").unwrap().authority,
            "localhost:80"
        );
        assert_eq!(
            AdminClient::new("http://[::1]:7000").unwrap().authority,
            "[::1]:7000"
        );
        for bad in ["127.0.0.1:9000", "https://x:1", "http://", "http://a:1/v1"] {
            assert!(AdminClient::new(bad).is_err(), "{bad}");
        }
    }

    /// A server that answers one connection with `answer` (bytes as sent),
    /// after reading the request head; `None` never answers.
    async fn serve_once(answer: Option<Vec<u8>>) -> AdminClient {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap() == 1 {
                head.push(byte[0]);
            }
            match answer {
                Some(answer) => {
                    // The client may hang up early (the oversize case).
                    let _ = stream.write_all(&answer).await;
                }
                None => std::future::pending().await,
            }
        });
        AdminClient::new(&url).unwrap()
    }

    #[tokio::test]
    async fn answers_plain_chunked_and_after_100_continue() {
        let plain = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let r = serve_once(Some(plain.to_vec())).await;
        let r = r.raw("POST", "/v1/x", Some(b"{}")).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));

        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = serve_once(Some(chunked.to_vec())).await;
        assert_eq!(r.raw("GET", "/", None).await.unwrap().body, b"abcde");

        let continued =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope";
        let r = serve_once(Some(continued.to_vec())).await;
        let r = r.raw("GET", "/", None).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope"[..]));

        let garbage = serve_once(Some(b"SMTP 200\r\n\r\n".to_vec())).await;
        let error = garbage.raw("GET", "/", None).await.unwrap_err();
        assert!(matches!(error, ClientError::Protocol { .. }), "{error}");
    }

    #[tokio::test]
    async fn an_oversize_answer_fails_while_read() {
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            ADMIN_RESPONSE_BYTES_MAX + 1
        )
        .into_bytes();
        answer.resize(answer.len() + ADMIN_RESPONSE_BYTES_MAX + 1, b'x');
        let client = serve_once(Some(answer)).await;
        let error = client.raw("GET", "/metrics", None).await.unwrap_err();
        assert!(error.to_string().contains("client's limit"), "{error}");
    }

    #[tokio::test]
    async fn silence_times_out_and_refusal_names_the_address() {
        let silent = serve_once(None)
            .await
            .with_timeout(Duration::from_millis(100));
        let error = silent.raw("GET", "/", None).await.unwrap_err();
        assert!(matches!(error, ClientError::Timeout { .. }), "{error}");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = AdminClient::new(&format!("http://{addr}")).unwrap();
        let error = client
            .get::<serde_json::Value>("/v1/volumes")
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, ClientError::Connect { .. }), "{text}");
        assert!(
            text.contains(&addr.to_string()) && text.contains("node running"),
            "{text}"
        );
    }
}
