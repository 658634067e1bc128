//! What the outside reads of a saga: its commands as participants get them, its view as
//! the API returns it, and the JSON replies participants send.

pub mod command;
pub mod filter;
pub mod results;
pub mod stored;
pub mod view;
pub mod wire;
