//! Shared helpers for sagalog benchmarks and load generators.
