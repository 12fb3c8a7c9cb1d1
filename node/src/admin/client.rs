//! [`AdminClient`]: the `metro` CLI's HTTP/1.1 client for the admin API —
//! one request per connection (`Connection: close`), JSON bodies, a
//! deadline on the whole exchange, a bounded response. Small on purpose:
//! the API is local or on a management network, plain HTTP.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::api::ApiError;

/// The largest response accepted.
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// The default deadline of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

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
            timeout: REQUEST_TIMEOUT,
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

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<RawResponse, ClientError> {
        let mut stream =
            TcpStream::connect(&self.authority)
                .await
                .map_err(|e| ClientError::Connect {
                    url: self.url.clone(),
                    reason: e.to_string(),
                })?;
        let body = body.unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: metro/{}\r\nContent-Length: {}\r\n",
            self.authority,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str("\r\n");
        let io = |e: std::io::Error| self.protocol(e.to_string());
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        stream.write_all(body).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            if raw.len() + n > RESPONSE_BYTES_MAX {
                return Err(self.protocol(format!("response over {RESPONSE_BYTES_MAX} bytes")));
            }
            raw.extend_from_slice(&buf[..n]);
        }
        parse_response(&raw).map_err(|reason| self.protocol(reason))
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a whole HTTP/1.1 response (read to EOF).
pub fn parse_response(raw: &[u8]) -> Result<RawResponse, String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut content_type = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header {line:?}"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(value.parse::<usize>().map_err(|_| "bad content-length")?);
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "content-type" => content_type = Some(value.to_owned()),
            _ => {}
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = length {
        rest.get(..length)
            .ok_or("body shorter than content-length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(RawResponse {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let r = parse_response(plain).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap().body, b"abcde");
        for bad in [
            &b"garbage"[..],
            b"SMTP 200\r\n\r\n",
            b"HTTP/1.1 xx OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(parse_response(bad).is_err());
        }
    }
}
