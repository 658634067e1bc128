//! Why `sagalog serve` could not start, or stopped with an error: what it was doing
//! and the cause, as one log line; `serve` then exits with status 1.

use std::path::PathBuf;

use sagalog_engine::definition::DefinitionError;
use sagalog_engine::EngineError;
use sagalog_relay::RelayError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },
    #[error("{doing}: {source}")]
    Engine {
        doing: String,
        source: Box<EngineError>,
    },
    #[error("{doing}: {source}")]
    Kafka {
        doing: String,
        source: Box<RelayError>,
    },
    /// Options that do not fit the data directory.
    #[error("{0}")]
    Options(String),
    #[error("definition {}: {source}", path.display())]
    Definition {
        path: PathBuf,
        source: DefinitionError,
    },
}

/// The error of doing `doing` (it names what it did, e.g. "listening on 127.0.0.1:80").
pub trait Doing<T> {
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, ServeError>;
}

impl<T> Doing<T> for Result<T, std::io::Error> {
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, ServeError> {
        self.map_err(|source| ServeError::Io {
            doing: doing(),
            source,
        })
    }
}

impl<T> Doing<T> for Result<T, EngineError> {
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, ServeError> {
        self.map_err(|source| ServeError::Engine {
            doing: doing(),
            source: Box::new(source),
        })
    }
}

impl<T> Doing<T> for Result<T, RelayError> {
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, ServeError> {
        self.map_err(|source| ServeError::Kafka {
            doing: doing(),
            source: Box::new(source),
        })
    }
}
