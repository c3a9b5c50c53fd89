//! The plain HTTP routes on the session port: `/health`, `/ready` (= `/readyz`),
//! `POST /__internal/drain`, `/metrics`, `/debug/memory` and 404. Bodies are built here; the
//! connection writes them and closes.
//!
//! Invariant: answering never waits: every body is built from atomics and the metrics
//! registry, so the probes answer whatever the session pools hold.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use super::shared::Shared;
use crate::http::admission::Route;
use crate::http::request::Request;
use crate::http::response::write_response;
use crate::memory;
use crate::metrics::exposition::Format;

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const MIB: f64 = 1024.0 * 1024.0;

/// Writes the whole response for a non-upgrade `route` from `peer` into `out`; returns the
/// status.
pub fn respond(
    shared: &Shared,
    route: Route,
    request: &Request<'_>,
    peer: SocketAddr,
    out: &mut Vec<u8>,
) -> u16 {
    shared.metrics.http_requests.inc();
    let method_ok = match route {
        Route::Drain => request.method == "POST",
        _ => request.method == "GET" || request.method == "HEAD",
    };
    if !method_ok {
        let (allow, body): (&str, &[u8]) = match route {
            Route::Drain => ("POST", b"only POST is served\n"),
            _ => ("GET", b"only GET is served\n"),
        };
        write_response(out, 405, TEXT, &[("Allow", allow)], body);
        return 405;
    }
    match route {
        Route::Health => write_response(out, 200, JSON, &[], br#"{"status":"healthy"}"#),
        Route::Ready => return ready(shared, out),
        Route::Drain => return drain(shared, request, peer, out),
        Route::Metrics => return metrics(shared, request, out),
        Route::DebugMemory => {
            if let Some(status) = check_metrics_token(shared, request, out) {
                return status;
            }
            write_response(out, 200, JSON, &[], debug_memory(shared).as_bytes());
        }
        Route::NotFound | Route::Listen | Route::Echo => {
            write_response(out, 404, TEXT, &[], b"not found\n");
            return 404;
        }
    }
    200
}

fn ready(shared: &Shared, out: &mut Vec<u8>) -> u16 {
    let (status, body): (u16, &[u8]) = if shared.is_draining() {
        (503, br#"{"status":"draining"}"#)
    } else if shared.is_full() {
        (503, br#"{"status":"full"}"#)
    } else {
        (200, br#"{"status":"ready"}"#)
    };
    write_response(out, status, JSON, &[], body);
    status
}

/// `POST /__internal/drain`: begins the drain (idempotent) for loopback peers whose request
/// came through no proxy; 403 otherwise.
fn drain(shared: &Shared, request: &Request<'_>, peer: SocketAddr, out: &mut Vec<u8>) -> u16 {
    if !is_loopback(peer.ip()) || request.forwarded {
        tracing::warn!(%peer, forwarded = request.forwarded, "drain request refused: not from a loopback peer");
        write_response(
            out,
            403,
            TEXT,
            &[],
            b"the drain is only served to loopback peers, without forwarding headers\n",
        );
        return 403;
    }
    shared.begin_drain("POST /__internal/drain");
    write_response(out, 200, JSON, &[], br#"{"status":"draining"}"#);
    200
}

/// Loopback, including an IPv4 loopback address mapped into IPv6.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// When a metrics token is configured and `request` does not carry it: writes the 401/403
/// into `out` and returns its status.
fn check_metrics_token(shared: &Shared, request: &Request<'_>, out: &mut Vec<u8>) -> Option<u16> {
    let token = shared.config.metrics_token.as_deref()?;
    let status = match crate::http::admission::check_bearer(request, Some(token)) {
        Ok(()) => return None,
        Err(_) if request.authorization.is_none() => 401,
        Err(_) => 403,
    };
    let headers: &[(&str, &str)] = if status == 401 {
        &[("WWW-Authenticate", "Bearer")]
    } else {
        &[]
    };
    write_response(
        out,
        status,
        TEXT,
        headers,
        b"this route needs the metrics bearer token\n",
    );
    Some(status)
}

fn metrics(shared: &Shared, request: &Request<'_>, out: &mut Vec<u8>) -> u16 {
    if let Some(status) = check_metrics_token(shared, request, out) {
        return status;
    }
    shared.metrics.ready.set(i64::from(shared.is_ready()));
    shared
        .metrics
        .resident_bytes
        .set(i64::try_from(memory::rss_bytes()).unwrap_or(i64::MAX));
    let format = Format::negotiate(request.accept);
    write_response(
        out,
        200,
        format.content_type(),
        &[],
        shared.metrics.encode(format).as_bytes(),
    );
    200
}

/// The JSON the chaos-test tooling polls (`rss_mb`, `asyncio_tasks`, … of the Python service).
fn debug_memory(shared: &Shared) -> String {
    let heap = memory::heap_in_use();
    let commit = memory::heap_commit();
    let mut drops = String::new();
    let mut high = String::new();
    for (i, (stream, dropped, high_water)) in shared.metrics.ring_drops_by_stream().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(drops, "{sep}\"{stream}\":{dropped}");
        let _ = write!(high, "{sep}\"{stream}\":{high_water}");
    }
    format!(
        concat!(
            "{{\"rss_mb\":{:.1},\"asyncio_tasks\":{},\"traced_current_mb\":{:.1},",
            "\"traced_peak_mb\":{:.1},\"pusher_debug\":{{\"queue_drops\":{{{}}},",
            "\"queue_max_len\":{{{}}},\"sessions\":{},\"budget_mb\":{:.1},",
            "\"heap_committed_mb\":{:.1},\"allocator_purge_delay_ms\":{}}}}}"
        ),
        memory::rss_bytes() as f64 / MIB,
        shared.background_tasks(),
        heap.current_bytes as f64 / MIB,
        heap.peak_bytes as f64 / MIB,
        drops,
        high,
        shared
            .sessions_open
            .load(std::sync::atomic::Ordering::Relaxed),
        shared.budget.total_bytes() as f64 / MIB,
        commit.current_bytes as f64 / MIB,
        memory::purge_delay_ms(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_peers() {
        for (ip, expected) in [
            ("127.0.0.1", true),
            ("127.0.0.5", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("10.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("fe80::1", false),
        ] {
            assert_eq!(is_loopback(ip.parse().unwrap()), expected, "{ip}");
        }
    }
}
