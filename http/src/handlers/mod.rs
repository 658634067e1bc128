//! The routes' handlers, by concern: each an `impl App` block that turns one route of
//! http/openapi.yaml into engine calls (its dispatch is [`crate::app`]'s).

mod admin;
mod sagas;
mod serving;
