// SPDX-License-Identifier: GPL-2.0

//! `/sys/kernel/kdbt/`: the knobs (`enabled`, `flush`, `cache_kb`, `client`,
//! `client_reset`) and the
//! statistics (`stats/NAME` totals, `stats/cpuN/NAME` per CPU). See
//! `docs/ABI/sysfs-kernel-kdbt`. Writes that do not parse, or are out of
//! range, fail with `EINVAL` and change nothing.

use core::ffi::CStr;
use core::fmt::Write;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed};
use kernel::bindings;
use kernel::prelude::*;

use crate::control;
use crate::stats::{self, CpuStats, SCALARS};

type Show = unsafe extern "C" fn(*mut bindings::kobject, *mut bindings::kobj_attribute, *mut u8) -> isize;
type Store =
    unsafe extern "C" fn(*mut bindings::kobject, *mut bindings::kobj_attribute, *const u8, usize) -> isize;

/// The attributes of the `stats` directories: the scalars, then `entries_by_vector`.
const NSTATS: usize = SCALARS.len() + 1;
const STAT_NAMES: [&CStr; NSTATS] = [
    c"blocks_translated",
    c"cache_bytes_used",
    c"dispatcher_entries",
    c"lookup_hits",
    c"lookup_misses",
    c"pc_rewrites",
    c"rollbacks",
    c"flushes",
    c"native_fallbacks",
    c"invalidations",
    c"blocks_invalidated",
    c"client_dropped",
    c"stack_scans",
    c"stack_words_rewritten",
    c"native_switches",
    c"entries_by_vector",
];

// sysfs keeps pointers to attributes and groups for as long as they are
// registered, so they live in statics, written once in `Sysfs::new` before
// registration.
const NKNOBS: usize = 8;
static mut KNOBS: [bindings::kobj_attribute; NKNOBS] = [const { zeroed_attr() }; NKNOBS];
static mut KNOB_PTRS: [*mut bindings::attribute; NKNOBS + 1] = [ptr::null_mut(); NKNOBS + 1];
static mut KNOB_GROUP: bindings::attribute_group = const { zeroed_group() };
static mut STAT_ATTRS: [bindings::kobj_attribute; NSTATS] = [const { zeroed_attr() }; NSTATS];
static mut STAT_PTRS: [*mut bindings::attribute; NSTATS + 1] = [ptr::null_mut(); NSTATS + 1];
static mut STAT_GROUP: bindings::attribute_group = const { zeroed_group() };

/// The `stats` directory, to tell totals from a CPU's `show`.
static STATS_DIR: AtomicPtr<bindings::kobject> = AtomicPtr::new(ptr::null_mut());

const fn zeroed_attr() -> bindings::kobj_attribute {
    // SAFETY: an all-zero `kobj_attribute` is valid (null name and callbacks).
    unsafe { core::mem::zeroed() }
}

const fn zeroed_group() -> bindings::attribute_group {
    // SAFETY: an all-zero `attribute_group` is valid (no name, no attributes).
    unsafe { core::mem::zeroed() }
}

/// A bounded writer into a sysfs page.
struct Page {
    buf: *mut u8,
    len: usize,
}

impl Write for Page {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if self.len + s.len() > 4096 {
            return Err(core::fmt::Error);
        }
        // SAFETY: sysfs hands `show` a PAGE_SIZE buffer; the bound is checked above.
        unsafe { ptr::copy_nonoverlapping(s.as_ptr(), self.buf.add(self.len), s.len()) };
        self.len += s.len();
        Ok(())
    }
}

fn emit(buf: *mut u8, f: impl FnOnce(&mut Page) -> core::fmt::Result) -> isize {
    let mut page = Page { buf: buf.cast(), len: 0 };
    match f(&mut page) {
        Ok(()) => page.len as isize,
        Err(_) => -(bindings::EFBIG as isize),
    }
}

/// Parses a sysfs write as one decimal number (a trailing newline allowed).
fn parse(buf: *const u8, count: usize) -> Result<usize> {
    // SAFETY: sysfs passes `count` readable bytes.
    let bytes = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count) };
    let s = core::str::from_utf8(bytes).map_err(|_| EINVAL)?;
    let s = s.strip_suffix('\n').unwrap_or(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EINVAL);
    }
    s.parse::<usize>().map_err(|_| EINVAL)
}

fn store_result(r: Result, count: usize) -> isize {
    match r {
        Ok(()) => count as isize,
        Err(e) => e.to_errno() as isize,
    }
}

unsafe extern "C" fn enabled_show(_: *mut bindings::kobject, _: *mut bindings::kobj_attribute, buf: *mut u8) -> isize {
    emit(buf, |p| writeln!(p, "{}", u8::from(control::enabled())))
}

unsafe extern "C" fn enabled_store(
    _: *mut bindings::kobject,
    _: *mut bindings::kobj_attribute,
    buf: *const u8,
    count: usize,
) -> isize {
    let r = match parse(buf, count) {
        Ok(0) => control::disable(),
        Ok(1) => control::enable(crate::native_range()),
        _ => Err(EINVAL),
    };
    store_result(r, count)
}

unsafe extern "C" fn flush_store(
    _: *mut bindings::kobject,
    _: *mut bindings::kobj_attribute,
    buf: *const u8,
    count: usize,
) -> isize {
    let r = match parse(buf, count) {
        Ok(1) => control::flush(),
        _ => Err(EINVAL),
    };
    store_result(r, count)
}

unsafe extern "C" fn cache_kb_show(_: *mut bindings::kobject, _: *mut bindings::kobj_attribute, buf: *mut u8) -> isize {
    emit(buf, |p| writeln!(p, "{}", control::cache_kb()))
}

unsafe extern "C" fn cache_kb_store(
    _: *mut bindings::kobject,
    _: *mut bindings::kobj_attribute,
    buf: *const u8,
    count: usize,
) -> isize {
    store_result(parse(buf, count).and_then(control::set_cache_kb), count)
}

unsafe extern "C" fn client_show(_: *mut bindings::kobject, _: *mut bindings::kobj_attribute, buf: *mut u8) -> isize {
    emit(buf, |p| writeln!(p, "{}", crate::client::name(crate::client::selected())))
}

unsafe extern "C" fn client_store(
    _: *mut bindings::kobject,
    _: *mut bindings::kobj_attribute,
    buf: *const u8,
    count: usize,
) -> isize {
    // SAFETY: sysfs passes `count` readable bytes.
    let bytes = unsafe { core::slice::from_raw_parts(buf, count) };
    let r = core::str::from_utf8(bytes).map_err(|_| EINVAL).and_then(crate::client::parse);
    store_result(r.and_then(control::set_client), count)
}

unsafe extern "C" fn client_reset_store(
    _: *mut bindings::kobject,
    _: *mut bindings::kobj_attribute,
    buf: *const u8,
    count: usize,
) -> isize {
    let r = match parse(buf, count) {
        Ok(1) => control::reset_client(),
        _ => Err(EINVAL),
    };
    store_result(r, count)
}

unsafe extern "C" fn heap_show(_: *mut bindings::kobject, _: *mut bindings::kobj_attribute, buf: *mut u8) -> isize {
    emit(buf, |p| writeln!(p, "{}", crate::heap::usage().0))
}

unsafe extern "C" fn heap_tables_show(
    _: *mut bindings::kobject,
    _: *mut bindings::kobj_attribute,
    buf: *mut u8,
) -> isize {
    emit(buf, |p| writeln!(p, "{}", crate::heap::tables()))
}

/// Root only: these are kernel addresses (KASLR).
unsafe extern "C" fn code_ranges_show(_: *mut bindings::kobject, _: *mut bindings::kobj_attribute, buf: *mut u8) -> isize {
    emit(buf, |p| crate::cpu::code_ranges().try_for_each(|(id, s, e)| writeln!(p, "{} {:x} {:x}", id, s, e)))
}

unsafe extern "C" fn stat_show(kobj: *mut bindings::kobject, attr: *mut bindings::kobj_attribute, buf: *mut u8) -> isize {
    let base = ptr::addr_of_mut!(STAT_ATTRS).cast::<bindings::kobj_attribute>();
    // SAFETY: `attr` is one of `STAT_ATTRS` (only they have this callback).
    let index = unsafe { attr.offset_from(base) } as usize;
    let all = stats::all();
    let cpus: &[CpuStats] = if kobj == STATS_DIR.load(Relaxed) {
        all
    } else {
        // SAFETY: every other directory with this group is a `stats/cpuN`
        // kobject created in `Sysfs::new` with its CPU id as its name.
        let id = unsafe { cpu_of(kobj) };
        id.and_then(|i| all.get(i..=i)).unwrap_or(&[])
    };
    if let Some((_, field)) = SCALARS.get(index) {
        let v: u64 = cpus.iter().map(|s| field(s).load(Relaxed)).sum();
        return emit(buf, |p| writeln!(p, "{}", v));
    }
    emit(buf, |p| {
        for v in 0..crate::idt::VECTORS {
            let n: u64 = cpus.iter().map(|s| s.entries_by_vector[v].load(Relaxed)).sum();
            if n != 0 {
                writeln!(p, "{} {}", v, n)?;
            }
        }
        Ok(())
    })
}

/// The CPU id of a `cpuN` directory.
///
/// # Safety
/// `kobj` must be a live kobject.
unsafe fn cpu_of(kobj: *mut bindings::kobject) -> Option<usize> {
    // SAFETY: a live kobject has a valid name (the caller's contract).
    let name = unsafe { CStr::from_ptr((*kobj).name.cast()) };
    name.to_str().ok()?.strip_prefix("cpu")?.parse().ok()
}

fn attr(name: &'static CStr, mode: u16, show: Option<Show>, store: Option<Store>) -> bindings::kobj_attribute {
    let mut a = zeroed_attr();
    a.attr.name = name.as_ptr().cast();
    a.attr.mode = mode;
    a.show = show;
    a.store = store;
    a
}

/// The registered directories.
///
/// # Invariants
/// Every pointer is a live kobject created by `new`, released in `drop`.
pub(crate) struct Sysfs {
    root: *mut bindings::kobject,
    stats: *mut bindings::kobject,
    cpus: KVec<*mut bindings::kobject>,
}

// SAFETY: kobjects are reference counted and safe to release from any thread.
unsafe impl Send for Sysfs {}
// SAFETY: `Sysfs` has no interior mutability.
unsafe impl Sync for Sysfs {}

fn create_dir(name: &CStr, parent: *mut bindings::kobject, group: *const bindings::attribute_group) -> Result<*mut bindings::kobject> {
    // SAFETY: `name` is a valid C string and `parent` a live kobject.
    let k = unsafe { bindings::kobject_create_and_add(name.as_ptr().cast(), parent) };
    if k.is_null() {
        return Err(ENOMEM);
    }
    // SAFETY: `k` is live; `group` points to a static, fully initialised group.
    let r = unsafe { bindings::sysfs_create_group(k, group) };
    if r != 0 {
        // SAFETY: drops the only reference to `k`.
        unsafe { bindings::kobject_put(k) };
        return Err(Error::from_errno(r));
    }
    Ok(k)
}

impl Sysfs {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: the statics are written here once, before any registration
        // makes them visible to sysfs, and never again while registered.
        unsafe {
            let knobs = &mut *ptr::addr_of_mut!(KNOBS);
            knobs[0] = attr(c"enabled", 0o644, Some(enabled_show), Some(enabled_store));
            knobs[1] = attr(c"flush", 0o200, None, Some(flush_store));
            knobs[2] = attr(c"cache_kb", 0o644, Some(cache_kb_show), Some(cache_kb_store));
            knobs[3] = attr(c"heap_bytes_used", 0o444, Some(heap_show), None);
            knobs[4] = attr(c"heap_bytes_tables", 0o444, Some(heap_tables_show), None);
            knobs[5] = attr(c"client", 0o644, Some(client_show), Some(client_store));
            knobs[6] = attr(c"client_reset", 0o200, None, Some(client_reset_store));
            knobs[7] = attr(c"code_ranges", 0o400, Some(code_ranges_show), None);
            let ptrs = &mut *ptr::addr_of_mut!(KNOB_PTRS);
            for (p, k) in ptrs.iter_mut().zip(knobs.iter_mut()) {
                *p = &mut k.attr;
            }
            (*ptr::addr_of_mut!(KNOB_GROUP)).attrs = ptrs.as_mut_ptr();
            let sattrs = &mut *ptr::addr_of_mut!(STAT_ATTRS);
            let sptrs = &mut *ptr::addr_of_mut!(STAT_PTRS);
            for (i, name) in STAT_NAMES.iter().enumerate() {
                sattrs[i] = attr(name, 0o444, Some(stat_show), None);
                sptrs[i] = &mut sattrs[i].attr;
            }
            (*ptr::addr_of_mut!(STAT_GROUP)).attrs = sptrs.as_mut_ptr();
        }
        // SAFETY: `kernel_kobj` is the live /sys/kernel kobject.
        let root = create_dir(c"kdbt", unsafe { bindings::kernel_kobj }, ptr::addr_of!(KNOB_GROUP))?;
        let mut this = Sysfs { root, stats: ptr::null_mut(), cpus: KVec::new() };
        this.stats = create_dir(c"stats", root, ptr::addr_of!(STAT_GROUP))?;
        STATS_DIR.store(this.stats, Relaxed);
        for id in 0..crate::cpu::ids() {
            let mut name = [0u8; 12];
            let n = {
                let mut w = NameBuf { buf: &mut name, len: 0 };
                let _ = write!(w, "cpu{}", id);
                w.len
            };
            let cname = CStr::from_bytes_with_nul(&name[..=n]).map_err(|_| EINVAL)?;
            let k = create_dir(cname, this.stats, ptr::addr_of!(STAT_GROUP))?;
            this.cpus.push(k, GFP_KERNEL)?;
        }
        Ok(this)
    }
}

struct NameBuf<'a> {
    buf: &'a mut [u8; 12],
    len: usize,
}

impl Write for NameBuf<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        if end >= self.buf.len() {
            return Err(core::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl Drop for Sysfs {
    fn drop(&mut self) {
        STATS_DIR.store(ptr::null_mut(), Relaxed);
        for &k in self.cpus.iter().rev() {
            // SAFETY: created in `new`; removal waits for running callbacks.
            unsafe { bindings::kobject_put(k) };
        }
        for k in [self.stats, self.root] {
            if !k.is_null() {
                // SAFETY: as above.
                unsafe { bindings::kobject_put(k) };
            }
        }
    }
}
