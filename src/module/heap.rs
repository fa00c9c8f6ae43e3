// SPDX-License-Identifier: GPL-2.0

//! kdbt's private heap, behind the `alloc` crate's allocator shim.
//!
//! The dispatcher allocates while the kernel it interrupted may be inside the
//! kernel's own allocators on the same CPU, so the engine must never re-enter
//! them: all Rust `alloc` allocations come from one vmalloc'ed arena owned by
//! kdbt, carved into power-of-two size classes with per-class free lists.
//! The lock is taken with local interrupts off, so an interrupt handler that
//! enters the dispatcher on this CPU cannot deadlock against it.

use core::ptr::{self, NonNull};
use kernel::alloc::{allocator::Vmalloc, flags, Allocator};
use kernel::prelude::*;

use crate::irq::IrqGuard;

/// Smallest block handed out; also the minimum alignment.
const MIN_CLASS: usize = 4;
/// Number of size classes: 16 B up to 2^(MIN_CLASS + CLASSES - 1) bytes.
const CLASSES: usize = 24;
const PAGE: usize = 4096;

/// A bump-and-free-list arena.
///
/// # Invariants
/// `base..base+size` is a live vmalloc allocation owned by this heap while
/// `base` is non-null; `next` lies within it; every free-list node is a block
/// of its class that was handed out by this heap and freed back.
struct Arena {
    base: *mut u8,
    size: usize,
    next: usize,
    free: [*mut u8; CLASSES],
    in_use: usize,
}

// SAFETY: the arena's raw pointers refer to memory owned by the heap, and all
// access goes through the `HEAP` mutex.
unsafe impl Send for Arena {}

static HEAP: spin::Mutex<Arena> = spin::Mutex::new(Arena {
    base: ptr::null_mut(),
    size: 0,
    next: 0,
    free: [ptr::null_mut(); CLASSES],
    in_use: 0,
});

fn class_of(size: usize, align: usize) -> Option<usize> {
    let need = size.max(align).max(1 << MIN_CLASS).checked_next_power_of_two()?;
    let class = need.trailing_zeros() as usize - MIN_CLASS;
    (class < CLASSES).then_some(class)
}

impl Arena {
    fn alloc(&mut self, size: usize, align: usize) -> *mut u8 {
        let Some(class) = class_of(size, align) else { return ptr::null_mut() };
        let block = 1usize << (class + MIN_CLASS);
        let head = self.free[class];
        if !head.is_null() {
            // SAFETY: free-list nodes are blocks of this arena that hold the
            // next pointer in their first word (see `dealloc`).
            self.free[class] = unsafe { head.cast::<*mut u8>().read() };
            self.in_use += block;
            return head;
        }
        // Blocks are aligned to their size up to a page, which covers `align`.
        let start = match self.next.checked_next_multiple_of(block.min(PAGE)) {
            Some(s) if s.checked_add(block).is_some_and(|end| end <= self.size) => s,
            _ => return ptr::null_mut(),
        };
        self.next = start + block;
        self.in_use += block;
        // SAFETY: `start + block <= size`, so the block lies inside the arena.
        unsafe { self.base.add(start) }
    }

    /// # Safety
    /// `p` came from `alloc` of this arena with the same `size` and `align`.
    unsafe fn dealloc(&mut self, p: *mut u8, size: usize, align: usize) {
        let Some(class) = class_of(size, align) else { return };
        // SAFETY: the block is at least 16 bytes and 16-byte aligned, and the
        // caller gives it back, so it may hold the free-list link.
        unsafe { p.cast::<*mut u8>().write(self.free[class]) };
        self.free[class] = p;
        self.in_use -= 1 << (class + MIN_CLASS);
    }
}

/// Allocates the arena. Called once from module init, before any `alloc` use.
pub(crate) fn init(size: usize) -> Result {
    let layout = core::alloc::Layout::from_size_align(size, PAGE).map_err(|_| EINVAL)?;
    let mem = Vmalloc::alloc(layout, flags::GFP_KERNEL).map_err(|_| ENOMEM)?;
    let _irq = IrqGuard::new();
    let mut heap = HEAP.lock();
    *heap = Arena {
        base: mem.cast::<u8>().as_ptr(),
        size,
        next: 0,
        free: [ptr::null_mut(); CLASSES],
        in_use: 0,
    };
    Ok(())
}

/// Whether more than a quarter of the heap is handed out: the dispatcher then
/// flushes its cache, which frees the blocks' metadata. Size classes never
/// give memory back to each other, so the arena carves up to a few times the
/// peak in use; a quarter keeps that inside the arena.
pub(crate) fn under_pressure() -> bool {
    let _irq = IrqGuard::new();
    let heap = HEAP.lock();
    heap.in_use > heap.size / 4
}

/// Bytes handed out and bytes ever carved from the arena, for the log.
pub(crate) fn usage() -> (usize, usize) {
    let _irq = IrqGuard::new();
    let heap = HEAP.lock();
    (heap.in_use, heap.next)
}

/// Frees the arena. Called from module exit, after every `alloc` user is gone.
pub(crate) fn exit() {
    let _irq = IrqGuard::new();
    let mut heap = HEAP.lock();
    if let Some(base) = NonNull::new(heap.base) {
        let layout = core::alloc::Layout::from_size_align(heap.size, PAGE);
        if let Ok(layout) = layout {
            // SAFETY: `base` came from `Vmalloc::alloc` with this layout in
            // `init`, and nothing uses the arena any more.
            unsafe { Vmalloc::free(base, layout) };
        }
        heap.base = ptr::null_mut();
        heap.size = 0;
        heap.next = 0;
    }
}

// The allocator shim that `alloc` links against. With no final Rust link step
// there is no `#[global_allocator]` expansion, so kdbt defines the symbols.

#[no_mangle]
static __rust_no_alloc_shim_is_unstable: u8 = 0;

#[no_mangle]
static __rust_alloc_error_handler_should_panic: u8 = 0;

#[no_mangle]
extern "C" fn __rust_alloc(size: usize, align: usize) -> *mut u8 {
    let _irq = IrqGuard::new();
    HEAP.lock().alloc(size, align)
}

#[no_mangle]
extern "C" fn __rust_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    let p = __rust_alloc(size, align);
    if !p.is_null() {
        // SAFETY: `p` points to at least `size` freshly allocated bytes.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    p
}

/// # Safety
/// The `alloc` crate's contract: `p` was allocated with `size` and `align`.
#[no_mangle]
unsafe extern "C" fn __rust_dealloc(p: *mut u8, size: usize, align: usize) {
    let _irq = IrqGuard::new();
    // SAFETY: forwarded from the caller's contract.
    unsafe { HEAP.lock().dealloc(p, size, align) }
}

/// # Safety
/// The `alloc` crate's contract: `p` was allocated with `old` and `align`.
#[no_mangle]
unsafe extern "C" fn __rust_realloc(p: *mut u8, old: usize, align: usize, new: usize) -> *mut u8 {
    if class_of(old, align) == class_of(new, align) {
        return p;
    }
    let q = __rust_alloc(new, align);
    if !q.is_null() {
        // SAFETY: both blocks are live, distinct and at least `min(old, new)` long.
        unsafe { ptr::copy_nonoverlapping(p, q, old.min(new)) };
        // SAFETY: forwarded from the caller's contract.
        unsafe { __rust_dealloc(p, old, align) };
    }
    q
}

#[no_mangle]
extern "C" fn __rust_alloc_error_handler(size: usize, _align: usize) -> ! {
    let (in_use, carved) = usage();
    panic!("kdbt: private heap exhausted allocating {size} bytes ({in_use} in use, {carved} carved)");
}
