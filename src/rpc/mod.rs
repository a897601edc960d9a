//! rpc (being built)
