//! Integration tests of the domain: the rules of decide, and positions from the Istanbul dataset.
//! One test binary for the whole crate, so the stack is linked once.
mod domain_rules;
mod positions;
