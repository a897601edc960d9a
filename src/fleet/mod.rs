//! fleet (being built)
