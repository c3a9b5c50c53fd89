//! Sans-I/O WebSocket protocol (RFC 6455): bytes in, events out, no I/O and no heap.
//!
//! - [`handshake`]: the Sec-WebSocket-Accept value for the `101` answer.
//! - [`codec`]: the [`Decoder`] of client → server frames, which checks every framing rule,
//!   reassembles fragmented messages in the caller's buffer and validates text as UTF-8.
//! - [`frame`]: encoding of server → client frame headers and Close frames, and of masked
//!   client → server frames for clients, tests and tools (into a `Vec`; pusher never sends one).
//! - [`close`]: close status codes.
//!
//! No extension (permessage-deflate) or subprotocol is negotiated, so RSV bits are always 0.
//!
//! ```
//! use pusher::websocket::{Decoder, DecoderLimits, Event, MessageKind};
//!
//! let limits = DecoderLimits { max_message_bytes: 1024 };
//! let mut decoder = Decoder::new(limits);
//! let mut buf = vec![0; Decoder::buffer_bytes_required(limits)];
//! // A masked binary frame with payload [1, 2, 3] and an all-zero masking key, as read from a socket.
//! let received = [0x82, 0x83, 0, 0, 0, 0, 1, 2, 3];
//! buf[..received.len()].copy_from_slice(&received);
//! let mut filled = received.len();
//! while let Some(event) = decoder.decode(&mut buf, filled).expect("valid frame") {
//!     let Event::Message { kind, payload } = event else { unreachable!() };
//!     assert_eq!((kind, &buf[payload]), (MessageKind::Binary, &[1, 2, 3][..]));
//! }
//! filled = decoder.compact(&mut buf, filled);
//! assert_eq!(filled, 0);
//! ```

pub mod close;
pub mod codec;
pub mod frame;
pub mod handshake;

pub use codec::{Decoder, DecoderLimits, Event, MessageKind, Violation};
pub use frame::Opcode;
