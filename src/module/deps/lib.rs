//! Names the crates kdbt.ko links beside the `kernel` crate; `scripts/rust-deps.py`
//! reads this package's dependency tree. The module's own code is `src/module`.
#![no_std]
