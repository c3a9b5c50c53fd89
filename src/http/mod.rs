//! Sans-I/O HTTP/1.1 for the one port: request-head parsing, routing and admission of upgrades,
//! and response encoding. No sockets here; the server feeds bytes and writes what comes out.

pub mod admission;
pub mod request;
pub mod response;
