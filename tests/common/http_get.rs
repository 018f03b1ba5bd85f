//! A plain HTTP/1.0 GET against the controller's own endpoints on loopback
//! (`/readyz`, `/metrics`), shared by the end-to-end tests and the benchmark
//! (the benchmark includes this file by `#[path]`; no HTTP client dependency).

/// `GET path` on `127.0.0.1:port`: the status code and the body, or `None`
/// if nothing answers (yet).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}
