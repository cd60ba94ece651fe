//! Wrappers around a [`Handler`](crate::kafka::consume::Handler), in the manner of
//! Watermill's middleware: [`DeadLetter`] parks records that can never be
//! processed in `<topic>.dlq` so their partition moves on, and [`replay`] puts
//! them back once the cause is fixed; [`Correlated`] runs the handler inside
//! its record's correlation id, which every log line then carries.

pub mod correlation;
pub mod dead_letter;
pub mod replay;

pub use self::correlation::Correlated;
pub use self::dead_letter::DeadLetter;
