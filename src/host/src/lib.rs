//! Placeholder until the host runtime lands.
