//! scheduler (being built)
