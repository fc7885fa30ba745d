//! Raw HTTP/1.1 servers on loopback for responses no mock server produces (a body shorter
//! than its `Content-Length`), and reading a request head off a socket for servers that
//! misbehave on purpose.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A one-shot raw HTTP server on loopback that answers the first request with `head` (status
/// line and headers, without the blank line) and then `body`, then closes the connection.
/// Returns the server's base URL (`http://127.0.0.1:<port>`).
pub async fn raw_http_server(head: &'static str, body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while memchr::memmem::find(&request, b"\r\n\r\n").is_none() {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(b"\r\n\r\n").await;
            let _ = socket.write_all(&body).await;
            let _ = socket.flush().await;
            let _ = socket.shutdown().await;
        }
    });
    format!("http://{address}")
}

/// Reads an HTTP/1.1 request head from `stream` (up to the blank line); returns the head and
/// whatever body bytes arrived with it.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the request head ended",
            ));
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let rest = buffer[end + 4..].to_vec();
            return Ok((head, rest));
        }
    }
}

/// A raw HTTP/1.1 server on loopback that answers every request with `head` (status line and
/// headers, without the blank line) and then says nothing more, keeping the connection open
/// until the client gives up. Returns the server's base URL and a count of requests seen.
pub async fn silent_after_head_server(
    head: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                if read_head(&mut socket).await.is_err() {
                    return;
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(b"\r\n\r\n").await;
                let _ = socket.flush().await;
                // Silence: hold the connection until the client closes it.
                let mut sink = [0u8; 1024];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (format!("http://{address}"), seen)
}
