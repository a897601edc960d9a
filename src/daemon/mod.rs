//! daemon (being built)
