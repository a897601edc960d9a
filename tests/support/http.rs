//! One raw HTTP/1.1 exchange with the daemon: its HTTP framing and `GET /metrics`, on the socket or any
//! stream (the `--metrics-listen` TCP listener).

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::REPLY_TIMEOUT;

/// One HTTP/1.1 POST of `body` to `/`; returns the status line and the body.
pub async fn http_post(socket: &Path, body: &str) -> (String, String) {
    let request = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let stream = UnixStream::connect(socket).await.unwrap();
    let response = http_exchange(stream, &request).await;
    (response.status, response.body)
}

/// A response read by [`http_exchange`]: status line, headers (names lowercased) and body.
pub struct HttpResponse {
    pub status: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET of `path` on the socket (`Connection: close`).
pub async fn http_get(socket: &Path, path: &str) -> HttpResponse {
    let stream = UnixStream::connect(socket).await.unwrap();
    http_exchange(stream, &get_request(path)).await
}

/// The text of a `GET path` that asks the server to close the connection after answering.
pub fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// Writes `request` on `stream` and reads the response to the end (the request must ask for
/// `Connection: close`). The body is taken as sent: the daemon's answers have a `content-length`.
pub async fn http_exchange(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    request: &str,
) -> HttpResponse {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(REPLY_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("no HTTP reply in time")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {response:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}
