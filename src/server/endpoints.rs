//! The plain HTTP routes on the session port: `/health`, `/readyz`, `/metrics`,
//! `/debug/memory` and 404. Bodies are built here; the connection writes them and closes.

use std::fmt::Write;

use super::Shared;
use crate::http::admission::Route;
use crate::http::request::Request;
use crate::http::response::write_response;
use crate::memory;

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const MIB: f64 = 1024.0 * 1024.0;

/// Writes the whole response for a non-upgrade `route` into `out`; returns the status.
pub fn respond(shared: &Shared, route: Route, request: &Request<'_>, out: &mut Vec<u8>) -> u16 {
    shared.metrics.http_requests.inc();
    if request.method != "GET" && request.method != "HEAD" {
        write_response(out, 405, TEXT, &[("Allow", "GET")], b"only GET is served\n");
        return 405;
    }
    match route {
        Route::Health => write_response(out, 200, JSON, &[], br#"{"status":"healthy"}"#),
        Route::Ready => return ready(shared, out),
        Route::Metrics => return metrics(shared, request, out),
        Route::DebugMemory => write_response(out, 200, JSON, &[], debug_memory(shared).as_bytes()),
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

fn metrics(shared: &Shared, request: &Request<'_>, out: &mut Vec<u8>) -> u16 {
    if let Some(token) = shared.config.metrics_token.as_deref() {
        let refusal = match crate::http::admission::check_bearer(request, Some(token)) {
            Ok(()) => None,
            Err(_) if request.authorization.is_none() => Some(401),
            Err(_) => Some(403),
        };
        if let Some(status) = refusal {
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
                b"metrics need the bearer token\n",
            );
            return status;
        }
    }
    write_response(
        out,
        200,
        PROMETHEUS,
        &[],
        shared.metrics.encode().as_bytes(),
    );
    200
}

/// The JSON the chaos-test tooling polls (protocol.md §1).
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
