//! Request heads and the upgrade rules on arbitrary bytes: parsing, routing, the bearer token,
//! the listen query, the WebSocket headers and the `/metrics` format negotiation never panic,
//! and an accepted uid is always a valid id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pusher::http::admission;
use pusher::http::request::{self, Parsed};
use pusher::metrics::exposition::Format;

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Complete {
        request,
        head_bytes,
    }) = request::parse(data, 8192)
    else {
        return;
    };
    assert!(head_bytes <= data.len() && head_bytes <= 8192);
    let _ = admission::route(request.path, true);
    let _ = admission::check_bearer(&request, Some("fuzz-token"));
    let _ = Format::negotiate(request.accept);
    if let Ok(params) = admission::parse_listen_query(request.query) {
        assert!(pusher::id::Id::parse(params.uid.as_str().as_bytes()).is_ok());
        assert!((8_000..=48_000).contains(&params.sample_rate_hz));
    }
    if let Ok(key) = admission::check_websocket(&request) {
        assert_eq!(key.len(), 24);
    }
});
