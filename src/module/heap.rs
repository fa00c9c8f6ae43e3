// SPDX-License-Identifier: GPL-2.0

//! kdbt's private heap, behind the `alloc` crate's allocator shim.
//!
//! The dispatcher allocates while the kernel it interrupted may be inside the
//! kernel's own allocators on the same CPU, so the engine must never re-enter
//! them: every Rust `alloc` allocation comes from memory kdbt vmalloc'ed
//! beforehand, in process context, managed by `talc` (a coalescing
//! allocator). The lock is taken with local interrupts off; the dispatcher is
//! never re-entered (a fault or NMI inside it runs the kernel's handler
//! natively, see `entry`), so it cannot deadlock on it.
//!
//! The heap grows by chunks: one at load (iced-x86's decoder and encoder
//! tables, built once at load and kept, and process-context use), and one
//! per CPU that joins translation, sized from its code cache. A CPU's chunk
//! is given back when translation goes off and nothing is allocated in it.

use core::alloc::Layout;
use core::ptr::NonNull;
use kernel::alloc::{allocator::Vmalloc, flags, Allocator};
use kernel::prelude::*;
use talc::{ErrOnOom, Span, Talc};

use crate::irq::IrqGuard;

const PAGE: usize = 4096;
/// The chunk claimed at load: iced-x86's tables (about 870 KiB) and what
/// process-context code allocates.
pub(crate) const BASE_CHUNK: usize = 4 << 20;
/// Free bytes below which a CPU flushes its cache after a translation: more
/// than one translation can allocate (docs/engine.md), so an allocation
/// inside the engine never fails while the heap holds this much.
pub(crate) const HEADROOM: usize = 192 << 10;

struct Heap {
    talc: Talc<ErrOnOom>,
    in_use: usize,
    claimed: usize,
    /// Bytes in use once load finished: iced-x86's tables, which stay until unload.
    tables: usize,
    /// The chunk claimed at load, which stays until unload.
    base: Option<Chunk>,
    /// Chunks that could not go back when their CPU's translation ended
    /// (something was still allocated in them), freed at unload.
    kept: Option<KVec<Chunk>>,
}

// SAFETY: the heap's memory is owned by kdbt and only reached through `HEAP`.
unsafe impl Send for Heap {}

static HEAP: spin::Mutex<Heap> =
    spin::Mutex::new(Heap { talc: Talc::new(ErrOnOom), in_use: 0, claimed: 0, tables: 0, base: None, kept: None });

/// Memory claimed into the heap.
///
/// # Invariants
/// `base..base + size` is a live vmalloc allocation of `size` bytes, claimed
/// into `HEAP`, freed only by [`release`].
pub(crate) struct Chunk {
    base: NonNull<u8>,
    size: usize,
    /// The heap talc made of it.
    span: Span,
}

// SAFETY: a chunk is plain memory; it is freed from process context only.
unsafe impl Send for Chunk {}
// SAFETY: `Chunk` has no interior mutability.
unsafe impl Sync for Chunk {}

/// Allocates `size` bytes (rounded up to pages) and adds them to the heap.
/// Process context; may sleep.
pub(crate) fn grow(size: usize) -> Result<Chunk> {
    let size = size.checked_next_multiple_of(PAGE).ok_or(EINVAL)?;
    let layout = Layout::from_size_align(size, PAGE).map_err(|_| EINVAL)?;
    let base = Vmalloc::alloc(layout, flags::GFP_KERNEL).map_err(|_| ENOMEM)?.cast::<u8>();
    let _irq = IrqGuard::new();
    let mut heap = HEAP.lock();
    // SAFETY: `base..base + size` is fresh memory this heap now owns.
    let claimed = unsafe { heap.talc.claim(Span::from_base_size(base.as_ptr(), size)) };
    let Ok(span) = claimed else {
        drop(heap);
        // SAFETY: `base` came from `Vmalloc::alloc` with `layout` and was not claimed.
        unsafe { Vmalloc::free(base, layout) };
        return Err(ENOMEM);
    };
    heap.claimed += size;
    // INVARIANT: `base` is a live, claimed vmalloc allocation of `size` bytes.
    Ok(Chunk { base, size, span })
}

/// Claims the load-time chunk, which also holds talc's own metadata.
/// Process context, at load.
pub(crate) fn init() -> Result {
    let base = grow(BASE_CHUNK)?;
    let _irq = IrqGuard::new();
    HEAP.lock().base = Some(base);
    Ok(())
}

/// Records what is in use now as the load-time tables, once load built them.
pub(crate) fn mark_tables() {
    let _irq = IrqGuard::new();
    let mut heap = HEAP.lock();
    heap.tables = heap.in_use;
}

/// Bytes of the load-time tables (see [`mark_tables`]).
pub(crate) fn tables() -> usize {
    let _irq = IrqGuard::new();
    HEAP.lock().tables
}

/// Frees all heap memory, at unload: nothing of kdbt runs any more, so what
/// is still allocated (iced-x86's tables) goes with the module.
pub(crate) fn exit() {
    let (base, kept) = {
        let _irq = IrqGuard::new();
        let mut heap = HEAP.lock();
        heap.talc = Talc::new(ErrOnOom);
        heap.claimed = 0;
        heap.in_use = 0;
        heap.tables = 0;
        (heap.base.take(), heap.kept.take())
    };
    base.iter().for_each(free_memory);
    kept.iter().flat_map(|k| k.as_slice()).for_each(free_memory);
}

/// Gives `chunk` back if nothing is allocated in it; otherwise keeps it (as
/// memory the heap still uses) and says so. Process context; may sleep.
pub(crate) fn release(chunk: Chunk) {
    {
        let _irq = IrqGuard::new();
        let mut heap = HEAP.lock();
        // SAFETY: `chunk.span` is the heap `claim` returned for this chunk.
        let used = unsafe { heap.talc.get_allocated_span(chunk.span) };
        if !used.is_empty() {
            pr_warn!("heap: a chunk still holds {} bytes; keeping it until unload\n", used.size());
            let kept = heap.kept.get_or_insert_with(KVec::new);
            if kept.push(chunk, GFP_ATOMIC).is_err() {
                pr_err!("heap: cannot record a kept chunk; leaking it\n");
            }
            return;
        }
        // SAFETY: as above; nothing is allocated in it, so it may go entirely.
        unsafe { heap.talc.truncate(chunk.span, Span::empty()) };
        heap.claimed -= chunk.size;
    }
    free_memory(&chunk);
}

fn free_memory(c: &Chunk) {
    if let Ok(layout) = Layout::from_size_align(c.size, PAGE) {
        // SAFETY: `c.base` came from `Vmalloc::alloc` with this layout in
        // `grow`, and the heap no longer refers to it.
        unsafe { Vmalloc::free(c.base, layout) };
    }
}

/// Whether the heap has less than [`HEADROOM`] free bytes.
pub(crate) fn low() -> bool {
    let _irq = IrqGuard::new();
    let heap = HEAP.lock();
    heap.claimed.saturating_sub(heap.in_use) < HEADROOM
}

/// Bytes handed out and bytes claimed, for statistics and the log.
pub(crate) fn usage() -> (usize, usize) {
    let _irq = IrqGuard::new();
    let heap = HEAP.lock();
    (heap.in_use, heap.claimed)
}

fn alloc(layout: Layout) -> *mut u8 {
    let _irq = IrqGuard::new();
    let mut heap = HEAP.lock();
    // SAFETY: talc's contract: any non-zero-size layout (`alloc` never asks for zero).
    match unsafe { heap.talc.malloc(layout) } {
        Ok(p) => {
            heap.in_use += layout.size();
            p.as_ptr()
        }
        Err(()) => core::ptr::null_mut(),
    }
}

/// # Safety
/// `p` was allocated by this heap with `layout` and is not used any more.
unsafe fn free(p: *mut u8, layout: Layout) {
    let Some(p) = NonNull::new(p) else { return };
    let _irq = IrqGuard::new();
    let mut heap = HEAP.lock();
    // SAFETY: the caller's contract.
    unsafe { heap.talc.free(p, layout) };
    heap.in_use -= layout.size();
}

// The allocator shim that `alloc` links against. With no final Rust link step
// there is no `#[global_allocator]` expansion, so kdbt defines the symbols.

#[no_mangle]
static __rust_no_alloc_shim_is_unstable: u8 = 0;

#[no_mangle]
static __rust_alloc_error_handler_should_panic: u8 = 0;

#[no_mangle]
extern "C" fn __rust_alloc(size: usize, align: usize) -> *mut u8 {
    match Layout::from_size_align(size, align) {
        Ok(l) if size != 0 => alloc(l),
        _ => core::ptr::null_mut(),
    }
}

#[no_mangle]
extern "C" fn __rust_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    let p = __rust_alloc(size, align);
    if !p.is_null() {
        // SAFETY: `p` points to at least `size` freshly allocated bytes.
        unsafe { core::ptr::write_bytes(p, 0, size) };
    }
    p
}

/// # Safety
/// The `alloc` crate's contract: `p` was allocated with `size` and `align`.
#[no_mangle]
unsafe extern "C" fn __rust_dealloc(p: *mut u8, size: usize, align: usize) {
    if let Ok(l) = Layout::from_size_align(size, align) {
        // SAFETY: forwarded from the caller's contract.
        unsafe { free(p, l) };
    }
}

/// # Safety
/// The `alloc` crate's contract: `p` was allocated with `old` and `align`.
#[no_mangle]
unsafe extern "C" fn __rust_realloc(p: *mut u8, old: usize, align: usize, new: usize) -> *mut u8 {
    let q = __rust_alloc(new, align);
    if !q.is_null() {
        // SAFETY: both blocks are live, distinct and at least `min(old, new)` long.
        unsafe { core::ptr::copy_nonoverlapping(p, q, old.min(new)) };
        // SAFETY: forwarded from the caller's contract.
        unsafe { __rust_dealloc(p, old, align) };
    }
    q
}

/// Reached only if an allocation fails outside the engine's fallible paths:
/// the engine reserves before it allocates, and the dispatcher flushes while
/// [`HEADROOM`] is still free, so this is a kdbt bug, reported as one.
#[no_mangle]
extern "C" fn __rust_alloc_error_handler(size: usize, _align: usize) -> ! {
    let (in_use, claimed) = usage();
    panic!("kdbt: heap exhausted allocating {size} bytes ({in_use} in use of {claimed})");
}
