//! rpc: JSON-RPC on the daemon's Unix socket — transports and error shapes.
//!
//! Owns: the framings of SPEC §11 ([`transport`]: NDJSON, HTTP, WebSocket on one socket, limits, peer check,
//! graceful shutdown) and the error objects of the protocol ([`error`]). The method table (FleetManager
//! methods → `RpcModule`) lives beside these and is registered by the caller; the transport is generic over
//! any `jsonrpsee::Methods`. This module never binds or removes the socket file (`daemon::socket` does).

pub mod error;
pub mod transport;
