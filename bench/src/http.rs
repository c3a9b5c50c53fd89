//! A minimal HTTP/1.1 GET client: one request per connection (`Connection: close`), the body
//! read to its `Content-Length` or to the end of the stream. Enough for pusher's `/metrics` and
//! the S3 sink's `/_sink/*` routes, both of which answer with a length and close.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response read, head and body (the sink's object list for a long run is a few MiB).
const RESPONSE_BYTES_MAX: usize = 256 << 20;
/// Most headers parsed in a response.
const HEADERS_MAX: usize = 32;

/// A response: its status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET path` on `addr`, the whole exchange bounded by `timeout`. The error says which step
/// failed.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, String> {
    match tokio::time::timeout(timeout, exchange(addr, path)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "GET http://{addr}{path}: no answer within {} ms",
            timeout.as_millis()
        )),
    }
}

/// `GET path` on `addr` and the body as text, which must come with status 200.
pub async fn get_ok_text(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    let response = get(addr, path, timeout).await?;
    if response.status != 200 {
        return Err(format!(
            "GET http://{addr}{path}: status {}",
            response.status
        ));
    }
    String::from_utf8(response.body)
        .map_err(|_| format!("GET http://{addr}{path}: body is not UTF-8"))
}

async fn exchange(addr: SocketAddr, path: &str) -> Result<Response, String> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| format!("GET http://{addr}{path}: {what}: {e}");
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| fail("connect", &e))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| fail("write", &e))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| fail("read", &e))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > RESPONSE_BYTES_MAX {
            return Err(fail("read", &"response too large"));
        }
        if let Some(response) = parse_response(&raw).map_err(|e| fail("response", &e))? {
            return Ok(response);
        }
    }
    // End of stream: a response without Content-Length ends here.
    parse_response_at_eof(&raw).map_err(|e| fail("response", &e))
}

/// The response in `raw` if it is complete (head and `Content-Length` bytes of body); `None`
/// when more bytes are needed, or when the length is not given (the body then ends with the
/// stream).
fn parse_response(raw: &[u8]) -> Result<Option<Response>, String> {
    let Some((status, head_len, length)) = parse_head(raw)? else {
        return Ok(None);
    };
    match length {
        Some(length) if raw.len() >= head_len + length => Ok(Some(Response {
            status,
            body: raw[head_len..head_len + length].to_vec(),
        })),
        _ => Ok(None),
    }
}

fn parse_response_at_eof(raw: &[u8]) -> Result<Response, String> {
    let Some((status, head_len, length)) = parse_head(raw)? else {
        return Err("the connection closed before the end of the head".to_owned());
    };
    let body = &raw[head_len..];
    if let Some(length) = length
        && body.len() < length
    {
        return Err(format!(
            "the connection closed after {} of {length} body bytes",
            body.len()
        ));
    }
    Ok(Response {
        status,
        body: body.to_vec(),
    })
}

/// Status, head length and `Content-Length` of a complete head; `None` if the head is not
/// complete yet. A chunked body is refused (neither server here sends one).
fn parse_head(raw: &[u8]) -> Result<Option<(u16, usize, Option<usize>)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let status = response.code.ok_or("no status code")?;
    let mut length = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).map_err(|_| "bad Content-Length")?;
            length = Some(value.trim().parse().map_err(|_| "bad Content-Length")?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a chunked body is not supported".to_owned());
        }
    }
    Ok(Some((status, head_len, length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_complete_at_its_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        for cut in 0..raw.len() {
            assert!(parse_response(&raw[..cut]).unwrap().is_none(), "cut {cut}");
        }
        let response = parse_response(raw).unwrap().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"hello");
    }

    #[test]
    fn without_a_length_the_body_ends_with_the_stream() {
        let raw = b"HTTP/1.1 404 Not Found\r\n\r\nnot here";
        assert!(parse_response(raw).unwrap().is_none());
        let response = parse_response_at_eof(raw).unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.body, b"not here");
    }

    #[test]
    fn a_short_body_or_head_at_the_end_is_an_error() {
        assert!(parse_response_at_eof(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
        assert!(parse_response_at_eof(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_response(b"not http at all\r\n\r\n").is_err());
    }
}
