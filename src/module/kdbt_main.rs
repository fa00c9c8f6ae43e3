// SPDX-License-Identifier: GPL-2.0

//! kdbt: runs the x86-64 Linux kernel under dynamic binary translation.

use kernel::prelude::*;

mod heap;
mod irq;
mod selftest;

module! {
    type: Kdbt,
    name: "kdbt",
    author: "kdbt developers",
    description: "Dynamic binary translator for the running kernel",
    license: "GPL",
}

/// Size of kdbt's private heap (see `heap`).
const HEAP_BYTES: usize = 16 << 20;

struct Kdbt;

impl kernel::Module for Kdbt {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        heap::init(HEAP_BYTES)?;
        if let Err(e) = selftest::decode_kernel_function() {
            heap::exit();
            return Err(e);
        }
        pr_info!("loaded\n");
        Ok(Kdbt)
    }
}

impl Drop for Kdbt {
    fn drop(&mut self) {
        heap::exit();
        pr_info!("unloaded\n");
    }
}
