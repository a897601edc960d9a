//! job model (being built)
