//! `s3-sink`: a slow, forgetful S3 endpoint for upload benchmarks.
//!
//! Answers path-style `PUT /{bucket}/{key}` (what object_store's S3 client sends for a put) with
//! `200` and an `ETag` (object_store requires one) after `--delay-ms`, counted from the end of
//! the body. It keeps no bodies: per key it records the body length, the plaintext length (for
//! `.enc` keys the body less the 32 bytes of pusher's blob layout: length prefix, nonce, tag) and
//! how many times the key was put. Signatures are not checked.
//!
//! Other routes: `GET /_sink/objects` (everything recorded, JSON), `GET /_sink/health`; any other
//! `GET`/`HEAD` is `404`, `DELETE` is `204`, the rest `405`. HTTP/1.1 with keep-alive; a body
//! must come with `Content-Length` (object_store always sends one).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of pusher's encrypted blob beyond the plaintext: `u32` length, 12-byte nonce, 16-byte tag
/// (downstream.md §2).
pub const BLOB_OVERHEAD_BYTES: u64 = 4 + 12 + 16;
/// Longest request head accepted.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most headers parsed in a request.
const HEADERS_MAX: usize = 64;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:9000", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Time between the end of a PUT's body and its answer
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    delay_ms: u64,
}

/// What one key received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Object {
    /// Body length of the latest put.
    pub bytes: u64,
    /// `bytes` less the blob overhead for `.enc` keys, `bytes` otherwise.
    pub plaintext_bytes: u64,
    pub puts: u64,
}

/// Everything the sink recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    pub objects: BTreeMap<String, Object>,
    pub requests: u64,
    pub puts: u64,
    pub body_bytes: u64,
    pub puts_in_flight: usize,
    pub puts_in_flight_max: usize,
}

impl Recorded {
    fn to_json(&self, delay: Duration) -> Value {
        let objects: serde_json::Map<String, Value> = self
            .objects
            .iter()
            .map(|(key, object)| {
                (
                    key.clone(),
                    json!({
                        "bytes": object.bytes,
                        "plaintext_bytes": object.plaintext_bytes,
                        "puts": object.puts,
                    }),
                )
            })
            .collect();
        json!({
            "delay_ms": delay.as_millis() as u64,
            "requests": self.requests,
            "puts": self.puts,
            "body_bytes": self.body_bytes,
            "puts_in_flight": self.puts_in_flight,
            "puts_in_flight_max": self.puts_in_flight_max,
            "objects": objects,
        })
    }
}

/// The sink: its delay and what it recorded.
pub struct Sink {
    delay: Duration,
    recorded: Mutex<Recorded>,
}

impl Sink {
    pub fn new(delay: Duration) -> Sink {
        Sink {
            delay,
            recorded: Mutex::new(Recorded::default()),
        }
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().expect("no panic while recording")
    }
}

pub async fn run(args: Args) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("s3-sink: bind {}: {e}", args.listen))?;
    eprintln!(
        "s3-sink: listening on http://{}, answering each PUT {} ms after its body",
        args.listen, args.delay_ms
    );
    serve(
        listener,
        Arc::new(Sink::new(Duration::from_millis(args.delay_ms))),
    )
    .await;
    Ok(())
}

/// Accepts connections forever, one task each.
pub async fn serve(listener: TcpListener, sink: Arc<Sink>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    // A broken connection only ends itself; the client retries.
                    let _ = connection(stream, &sink).await;
                });
            }
            Err(e) => {
                eprintln!("s3-sink: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    content_length: u64,
    expect_continue: bool,
    close: bool,
    chunked: bool,
}

/// Parses a request head at the start of `buf`: `Some((head, its length))` when complete.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut head = Head {
        method: request.method.unwrap_or_default().to_owned(),
        path: request.path.unwrap_or_default().to_owned(),
        content_length: 0,
        expect_continue: false,
        close: request.version == Some(0),
        chunked: false,
    };
    for header in request.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().map_err(|_| "bad Content-Length")?;
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        }
    }
    Ok(Some((head, len)))
}

/// Serves one connection's requests in order until it closes.
async fn connection(mut stream: TcpStream, sink: &Sink) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Bytes read but not consumed yet (a head, or the start of the next request).
    let mut pending: Vec<u8> = Vec::with_capacity(8192);
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let (head, head_len) = loop {
            match parse_head(&pending) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) if pending.len() < HEAD_BYTES_MAX => {}
                Ok(None) => return respond(&mut stream, 431, &[], b"").await,
                Err(_) => return respond(&mut stream, 400, &[], b"").await,
            }
            let n = stream.read(&mut scratch).await?;
            if n == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&scratch[..n]);
        };
        pending.drain(..head_len);
        sink.recorded().requests += 1;
        if head.chunked {
            return respond(&mut stream, 411, &[], b"").await;
        }
        if head.expect_continue {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        // The body: counted, not kept.
        let mut body_left = head.content_length;
        let buffered = body_left.min(pending.len() as u64) as usize;
        pending.drain(..buffered);
        body_left -= buffered as u64;
        while body_left > 0 {
            let n = stream.read(&mut scratch).await?;
            if n == 0 {
                return Ok(());
            }
            let body = body_left.min(n as u64) as usize;
            body_left -= body as u64;
            pending.extend_from_slice(&scratch[body..n]);
        }
        handle(&mut stream, sink, &head).await?;
        if head.close {
            return Ok(());
        }
    }
}

async fn handle(stream: &mut TcpStream, sink: &Sink, head: &Head) -> io::Result<()> {
    let path = head.path.split('?').next().unwrap_or_default();
    match (head.method.as_str(), path) {
        ("GET", "/_sink/health") => respond(stream, 200, &[], b"ok\n").await,
        ("GET", "/_sink/objects") => {
            let body = sink.recorded().to_json(sink.delay).to_string();
            respond(
                stream,
                200,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await
        }
        ("PUT", _) => match object_key(path) {
            Some(key) => {
                let etag = put(sink, key, head.content_length).await;
                respond(stream, 200, &[("ETag", &etag)], b"").await
            }
            None => respond(stream, 400, &[], b"").await,
        },
        ("GET" | "HEAD", _) => respond(stream, 404, &[], b"").await,
        ("DELETE", _) => respond(stream, 204, &[], b"").await,
        _ => respond(stream, 405, &[], b"").await,
    }
}

/// Waits the delay, then records the put; returns the ETag to answer with.
async fn put(sink: &Sink, key: String, bytes: u64) -> String {
    {
        let mut recorded = sink.recorded();
        recorded.puts_in_flight += 1;
        recorded.puts_in_flight_max = recorded.puts_in_flight_max.max(recorded.puts_in_flight);
    }
    tokio::time::sleep(sink.delay).await;
    let mut recorded = sink.recorded();
    recorded.puts_in_flight -= 1;
    recorded.puts += 1;
    recorded.body_bytes += bytes;
    let sequence = recorded.puts;
    let plaintext_bytes = plaintext_bytes(&key, bytes);
    let object = recorded.objects.entry(key).or_default();
    object.bytes = bytes;
    object.plaintext_bytes = plaintext_bytes;
    object.puts += 1;
    format!("\"sink-{sequence}\"")
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let mut response = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = response.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await
}

/// The object key of a path-style request path `/{bucket}/{key}` (percent-decoded); `None`
/// without a bucket or a key.
fn object_key(path: &str) -> Option<String> {
    let (_bucket, key) = path.strip_prefix('/')?.split_once('/')?;
    let key = percent_decode(key)?;
    (!key.is_empty()).then_some(key)
}

/// `%XX` escapes decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Plaintext bytes of an object of `bytes` under `key`: less the blob overhead for `.enc`.
pub fn plaintext_bytes(key: &str, bytes: u64) -> u64 {
    if key.ends_with(".enc") {
        bytes.saturating_sub(BLOB_OVERHEAD_BYTES)
    } else {
        bytes
    }
}

/// The uid of an object key `[prefix/]chunks/{uid}/{conversation}/{timestamp}.{ext}`.
pub fn uid_of_key(key: &str) -> Option<&str> {
    let mut parts = key.split('/');
    parts.by_ref().find(|&part| part == "chunks")?;
    parts.next().filter(|uid| !uid.is_empty())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path;
    use object_store::prefix::PrefixStore;
    use object_store::{Attribute, AttributeValue, Attributes, ObjectStore, PutOptions};

    use super::*;
    use crate::http;

    #[test]
    fn blob_overhead_matches_the_server() {
        assert_eq!(
            BLOB_OVERHEAD_BYTES as usize,
            pusher::upload::crypto::BLOB_OVERHEAD_BYTES
        );
    }

    #[test]
    fn keys_come_from_path_style_paths() {
        assert_eq!(
            object_key("/bench/audio/chunks/u-1/c%3A1/1700000000.123.enc").as_deref(),
            Some("audio/chunks/u-1/c:1/1700000000.123.enc")
        );
        assert_eq!(object_key("/bench/k").as_deref(), Some("k"));
        assert_eq!(object_key("/bench/"), None);
        assert_eq!(object_key("/bench"), None);
        assert_eq!(object_key("bench/k"), None);
        assert_eq!(object_key("/b/bad%zz"), None);
        assert_eq!(object_key("/b/cut%4"), None);
    }

    #[test]
    fn plaintext_and_uid_of_a_key() {
        assert_eq!(plaintext_bytes("chunks/u/c/1.000.enc", 16_032), 16_000);
        assert_eq!(plaintext_bytes("chunks/u/c/1.000.bin", 16_032), 16_032);
        assert_eq!(plaintext_bytes("chunks/u/c/1.000.enc", 10), 0);
        assert_eq!(
            uid_of_key("audio/chunks/stream-7/c/1.000.enc"),
            Some("stream-7")
        );
        assert_eq!(uid_of_key("chunks/u/c/1.000.bin"), Some("u"));
        assert_eq!(uid_of_key("other/u/c/1.000.bin"), None);
        assert_eq!(uid_of_key("chunks"), None);
    }

    #[test]
    fn heads_are_parsed_with_their_body_length() {
        let raw = b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\nbody";
        let (head, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!(
            head,
            Head {
                method: "PUT".into(),
                path: "/b/k".into(),
                content_length: 12,
                expect_continue: true,
                close: false,
                chunked: false,
            }
        );
        assert!(parse_head(b"PUT /b/k HTTP/1.1\r\nHost:").unwrap().is_none());
        let (head, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(head.close, "HTTP/1.0 closes by default");
        assert!(parse_head(b"PUT /b/k HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    }

    /// object_store's S3 client, configured as pusher's is by `--store s3://bench/audio` and the
    /// AWS_* environment, puts through the sink; the sink records the keys and lengths.
    #[tokio::test]
    async fn object_store_s3_puts_are_recorded_after_the_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let delay = Duration::from_millis(200);
        tokio::spawn(serve(listener, Arc::new(Sink::new(delay))));
        let s3 = AmazonS3Builder::new()
            .with_endpoint(format!("http://{addr}"))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("bench")
            .with_secret_access_key("bench")
            .with_bucket_name("bench")
            .build()
            .unwrap();
        let store = PrefixStore::new(s3, "audio");
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::ContentType,
            AttributeValue::from("application/octet-stream"),
        );
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let keys = [
            ("chunks/u-1/c-1/1700000000.000.enc", 960_032),
            ("chunks/u-1/c-2/1700000060.000.enc", 32),
            ("chunks/u-2/c-1/1700000000.500.bin", 1000),
        ];
        let started = Instant::now();
        for (key, bytes) in keys {
            let body = vec![7u8; bytes];
            store
                .put_opts(&Path::from(key), body.into(), options.clone())
                .await
                .unwrap();
        }
        assert!(started.elapsed() >= 3 * delay);
        // The same key again: one object, two puts.
        let (key, bytes) = keys[2];
        store
            .put_opts(&Path::from(key), vec![1u8; bytes].into(), options.clone())
            .await
            .unwrap();

        let text = http::get_ok_text(addr, "/_sink/objects", Duration::from_secs(5))
            .await
            .unwrap();
        let recorded: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(recorded["puts"], 4);
        assert_eq!(recorded["puts_in_flight"], 0);
        assert_eq!(recorded["body_bytes"], 960_032 + 32 + 1000 + 1000);
        let objects = recorded["objects"].as_object().unwrap();
        assert_eq!(objects.len(), 3);
        assert_eq!(
            objects["audio/chunks/u-1/c-1/1700000000.000.enc"],
            json!({"bytes": 960_032, "plaintext_bytes": 960_000, "puts": 1})
        );
        assert_eq!(
            objects["audio/chunks/u-1/c-2/1700000060.000.enc"]["plaintext_bytes"],
            0
        );
        assert_eq!(
            objects["audio/chunks/u-2/c-1/1700000000.500.bin"],
            json!({"bytes": 1000, "plaintext_bytes": 1000, "puts": 2})
        );
        let health = http::get(addr, "/_sink/health", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(health.status, 200);
        let missing = http::get(addr, "/bench/audio/nothing", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(missing.status, 404);
    }
}
