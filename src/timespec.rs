//! timespec (being built)
