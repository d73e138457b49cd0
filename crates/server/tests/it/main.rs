//! Integration tests of the server's projections: incremental equals rebuilt.
//! One test binary for the whole crate, so the stack is linked once.
mod projection_props;
