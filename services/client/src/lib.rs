//! # chatpipe-client
//!
//! The Rust client of chatpipe's public contract (`shared/ARCHITECTURE.md`,
//! `schemas/ws/v1/`, the OpenAPI document): the one WebSocket client and the
//! one HTTP client that the integration tests and the load generator
//! (`benches/`) are written against, so that both speak the contract the
//! same way.
//!
//! - [`ws`]: connect to an edge's `/ws` with a bearer token (query or
//!   header), optionally from a given source address and with resume
//!   parameters; read the `hello` (typed, [`chatpipe_core::frames::ControlFrame`]);
//!   send frames; receive text frames, closes and losses. A refusal before
//!   `hello` is a typed [`ws::ConnectError::Refused`] with its close code.
//! - [`frames`]: client frames formatted by hand (`send`, `ack_seq`, a
//!   resend marker) and server frames read as borrowed views
//!   ([`frames::ServerFrame`], [`frames::DeliveredMessage`]) that copy no
//!   body: cheap enough for thousands of clients in one process.
//! - [`http`]: the HTTP API (`/v1/conversations`, members, history, search)
//!   with a bearer token per call, returning status and JSON; an optional
//!   retry loop for 429/5xx and transport errors, as a polite client does.
//!
//! The client does no de-duplication or catch-up of its own: what a real
//! client must do with `seq`, `message_id` and `resumed:false` is the
//! caller's (the tests assert on it, the load generator measures it).
//! Nothing here needs the engines: the crate's own tests are I/O-free or use
//! an in-process server on `127.0.0.1:0`.

pub mod frames;
pub mod http;
pub mod ws;

pub use frames::{DeliveredMessage, ServerFrame};
pub use http::{ApiClient, ApiResponse, HttpError};
pub use ws::{Close, ConnectError, ConnectOptions, Connection, Hello, Received, Resume};
