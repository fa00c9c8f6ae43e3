//! Running unmodified static Linux programs in user space, natively through our own ELF
//! loader or under translation, for `make user-check` and the busybox benchmark.

pub mod bench;
pub mod check;
pub mod child;
pub mod elf;
pub mod fsbase;
pub mod guest;
pub mod image;
pub mod stack;
pub mod stepped;
pub mod switch;
pub mod syscall;
pub mod translated;
pub mod workload;
