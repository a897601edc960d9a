//! rpc: JSON-RPC on the daemon's Unix socket — both ends of it.
//!
//! Owns: the framings of SPEC §11 ([`transport`]: NDJSON, HTTP, WebSocket on one socket, limits, peer check,
//! graceful shutdown), the error objects of the protocol ([`error`]), the method table ([`methods`]:
//! every FleetManager operation as a method or subscription), the params of every method ([`params`]) and
//! the results that are the protocol's own (`results`), the OpenRPC document generated from those types
//! ([`openrpc`]), `streamJobOutput` written as ready bytes on the NDJSON framing (`job_output`), and the
//! client (`herdctl`'s, the tests' and the bench's: [`client`]). The transport is generic over any
//! `jsonrpsee::Methods` plus the subscriptions it writes as bytes. This module never binds or removes the
//! socket file (`daemon::socket` does).

pub mod client;
pub mod error;
mod job_output;
pub mod methods;
pub mod openrpc;
pub mod params;
mod results;
pub mod transport;
