//! Helpers for the end-to-end tests: where the real models and fixtures are.
