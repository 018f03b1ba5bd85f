//! The model: what a source, a copy and a rule are, independent of any I/O.

pub mod kinds;
pub mod names;
pub mod pushrule;
pub mod records;
pub mod replica;
pub mod rules;
pub mod vocabulary;
