//! The domain: parties, sources, statements, claims, reviews and corrections; the commands that
//! record them, the events they become, and the rules (`decide`) between the two.
//!
//! Pure by design: no tonic, prost, sled or tokio here, and no clock or randomness; ids and time come
//! in through commands and [`decide::Context`]. Everything else depends on this crate, never the
//! reverse. [`dataset`] reads dataset files (lists of commands) and ships the Istanbul one.
pub mod command;
pub mod dataset;
pub mod decide;
pub mod error;
pub mod event;
pub mod limits;
pub mod model;
pub mod positions;
pub mod state;

pub use command::Command;
pub use decide::{decide, Context, Decision, StreamExpectation};
pub use error::{DomainError, FieldViolation};
pub use event::Event;
pub use state::{Overlay, State, View};
