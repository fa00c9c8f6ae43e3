// SPDX-License-Identifier: GPL-2.0

//! The client reports in `/sys/kernel/debug/kdbt/` (formats: docs/clients.md).
//! Opening a file builds its whole report from a snapshot of the block table
//! (helpers.c serves the reads), so a reader sees one consistent state.

use core::fmt::Write;
use iced_x86::{Decoder, DecoderOptions};
use kdbt_engine::{BlockRange, ClientKind, GuestMemory};
use kernel::alloc::{Flags, VVec};
use kernel::prelude::*;

use crate::client;
use crate::dispatch::KernelText;
use crate::ffi;

const GFP: Flags = GFP_KERNEL;

/// The debugfs files, by report kind (their index).
const FILES: [&core::ffi::CStr; 3] = [c"coverage", c"coverage.drcov", c"counts"];
const COVERAGE: usize = 0;
const DRCOV: usize = 1;
const COUNTS: usize = 2;

/// Creates `/sys/kernel/debug/kdbt/`.
pub(crate) fn create() {
    let names = FILES.map(|n| n.as_ptr());
    // SAFETY: `names` holds `FILES.len()` static C strings, which the helper
    // only passes to debugfs (which copies them).
    unsafe { ffi::kdbt_debugfs_create(names.as_ptr(), names.len() as i32) };
}

/// Removes it; waits for open files' operations in progress.
pub(crate) fn remove() {
    // SAFETY: plain call.
    unsafe { ffi::kdbt_debugfs_remove() };
}

/// A report's bytes.
struct Report {
    data: VVec<u8>,
}

impl Write for Report {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.data.extend_from_slice(s.as_bytes(), GFP).map_err(|_| core::fmt::Error)
    }
}

impl Report {
    fn bytes(&mut self, b: &[u8]) -> Result {
        self.data.extend_from_slice(b, GFP).map_err(|_| ENOMEM)
    }
}

/// Where a range's code lives: the core kernel (id 0) or a module.
#[derive(Clone, Copy)]
struct Text {
    base: u64,
    size: u64,
    name: [u8; ffi::MODULE_NAME_LEN],
}

impl Text {
    fn contains(&self, pc: u64) -> bool {
        pc.wrapping_sub(self.base) < self.size
    }

    fn name(&self) -> &str {
        let n = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..n]).unwrap_or("?")
    }
}

fn core_text() -> Text {
    let (start, end) = (ffi::symbol(c"_stext"), ffi::symbol(c"_etext"));
    let mut name = [0u8; ffi::MODULE_NAME_LEN];
    name[..7].copy_from_slice(b"vmlinux");
    Text { base: start, size: end.saturating_sub(start), name }
}

fn module_text(pc: u64) -> Option<Text> {
    let mut t = Text { base: 0, size: 0, name: [0; ffi::MODULE_NAME_LEN] };
    // SAFETY: the out-pointers are valid; `name` has MODULE_NAME_LEN bytes.
    let found = unsafe { ffi::kdbt_module_text(pc, &mut t.base, &mut t.size, t.name.as_mut_ptr()) };
    (found != 0).then_some(t)
}

/// The ranges and the texts they lie in: `texts[0]` is the core kernel, a
/// range's text index is `Some` when it lies in a known text.
struct Snapshot {
    ranges: VVec<BlockRange>,
    texts: VVec<Text>,
    dropped: u64,
}

fn snapshot() -> Result<Snapshot> {
    let table = client::table();
    let counting = client::recorded() == Some(ClientKind::Count);
    let mut ranges = VVec::new();
    // Under the count client a range that never completed an execution
    // (its count moved to a prefix) is not executed code.
    for r in table.ranges().filter(|r| !counting || r.count != 0) {
        ranges.push(r, GFP)?;
    }
    ranges.as_mut_slice().sort_unstable_by_key(|r| r.start);
    let mut texts = VVec::new();
    texts.push(core_text(), GFP)?;
    for r in ranges.iter() {
        if !texts.iter().any(|t| t.contains(r.start)) {
            if let Some(t) = module_text(r.start) {
                texts.push(t, GFP)?;
            }
        }
    }
    let dropped = crate::stats::total(|s| &s.client_dropped);
    Ok(Snapshot { ranges, texts, dropped })
}

/// Longest x86 instruction: the look-ahead past a range's end.
const MAX_INSN: usize = 15;

/// Instructions that start in the range, decoded from the text as it is now.
/// The last one may end past the range: text patched since the range was
/// recorded (a jump label's 5-byte jump that was a 1-byte `int3` mid-patch)
/// still counts the instruction at each start it covers.
fn insns(r: &BlockRange) -> usize {
    let mut buf = [0u8; 1024 + MAX_INSN];
    let len = (r.len as usize).min(1024);
    let Ok(n) = KernelText.read(r.start, &mut buf[..len + MAX_INSN]) else { return 0 };
    let end = r.start + len as u64;
    Decoder::with_ip(64, &buf[..n], r.start, DecoderOptions::NONE)
        .into_iter()
        .take_while(|i| !i.is_invalid() && i.ip() < end)
        .count()
}

fn symbol(out: &mut Report, pc: u64) -> Result {
    let mut buf = [0u8; ffi::KSYM_SYMBOL_LEN];
    // SAFETY: `buf` has room for any symbol `sprint_symbol` writes.
    let n = unsafe { ffi::kdbt_sprint_symbol(buf.as_mut_ptr(), pc) };
    out.bytes(buf.get(..n.max(0) as usize).unwrap_or(&[]))
}

fn header(out: &mut Report, s: &Snapshot) -> Result {
    let name = client::name(client::recorded());
    // SAFETY: plain call.
    let kaslr = unsafe { ffi::kdbt_kaslr_offset() };
    let core = s.texts.first().ok_or(EINVAL)?;
    (|| -> core::fmt::Result {
        writeln!(out, "# kdbt client={} ranges={} dropped={}", name, s.ranges.len(), s.dropped)?;
        writeln!(out, "# kaslr_offset={:#x}", kaslr)?;
        writeln!(out, "# text={:#x}-{:#x}", core.base, core.base + core.size)?;
        for t in s.texts.iter().skip(1) {
            writeln!(out, "# module {} {:#x} {}", t.name(), t.base, t.size)?;
        }
        Ok(())
    })()
    .map_err(|_| ENOMEM)
}

fn coverage(out: &mut Report, s: &Snapshot) -> Result {
    header(out, s)?;
    for r in s.ranges.iter() {
        write!(out, "{:#x} {} {} ", r.start, r.len, insns(r)).map_err(|_| ENOMEM)?;
        symbol(out, r.start)?;
        out.bytes(b"\n")?;
    }
    Ok(())
}

fn counts(out: &mut Report, s: &mut Snapshot) -> Result {
    header(out, s)?;
    s.ranges.as_mut_slice().sort_unstable_by(|a, b| b.count.cmp(&a.count).then(a.start.cmp(&b.start)));
    for r in s.ranges.iter().filter(|r| r.count != 0) {
        write!(out, "{} {:#x} {} {} ", r.count, r.start, r.len, insns(r)).map_err(|_| ENOMEM)?;
        symbol(out, r.start)?;
        out.bytes(b"\n")?;
    }
    Ok(())
}

/// The name of drcov's module for code in no text.
const OTHER_TEXT: &[u8] = b"[other kernel text]";

/// drcov's modules: the snapshot's texts, then, when some ranges lie in none
/// of them (ftrace and kprobe trampolines, BPF programs), one more spanning
/// those, so that every range has its record, as in the text report.
fn drcov_texts(s: &Snapshot) -> Result<VVec<Text>> {
    let mut texts = VVec::with_capacity(s.texts.len() + 1, GFP)?;
    for t in s.texts.iter() {
        texts.push(*t, GFP)?;
    }
    let other = s.ranges.iter().filter(|r| !s.texts.iter().any(|t| t.contains(r.start))).fold(None, |span, r| {
        let end = r.start + u64::from(r.len);
        Some(span.map_or((r.start, end), |(lo, hi): (u64, u64)| (lo.min(r.start), hi.max(end))))
    });
    if let Some((lo, hi)) = other {
        let mut name = [0u8; ffi::MODULE_NAME_LEN];
        name[..OTHER_TEXT.len()].copy_from_slice(OTHER_TEXT);
        texts.push(Text { base: lo, size: hi - lo, name }, GFP)?;
    }
    Ok(texts)
}

/// DynamoRIO's drcov format, version 2: a module table, then one binary
/// record per block (offset from its module's base, size, module id).
fn drcov(out: &mut Report, s: &Snapshot) -> Result {
    let texts = drcov_texts(s)?;
    let blocks = || {
        s.ranges.iter().filter_map(|r| {
            let id = texts.iter().position(|t| t.contains(r.start))?;
            let t = texts.get(id)?;
            Some((u32::try_from(r.start - t.base).ok()?, u16::try_from(r.len).ok()?, id as u16))
        })
    };
    (|| -> core::fmt::Result {
        writeln!(out, "DRCOV VERSION: 2")?;
        writeln!(out, "DRCOV FLAVOR: kdbt")?;
        writeln!(out, "Module Table: version 2, count {}", texts.len())?;
        writeln!(out, "Columns: id, base, end, entry, checksum, timestamp, path")?;
        for (i, t) in texts.iter().enumerate() {
            let ko = if i == 0 || i == s.texts.len() { "" } else { ".ko" };
            writeln!(out, "{:3}, {:#018x}, {:#018x}, 0x0000000000000000, 0x00000000, 0x00000000, {}{}", i, t.base, t.base + t.size, t.name(), ko)?;
        }
        writeln!(out, "BB Table: {} bbs", blocks().count())
    })()
    .map_err(|_| ENOMEM)?;
    for (start, size, id) in blocks() {
        out.bytes(&start.to_le_bytes())?;
        out.bytes(&size.to_le_bytes())?;
        out.bytes(&id.to_le_bytes())?;
    }
    Ok(())
}

fn build(kind: usize) -> Result<Report> {
    let mut s = control_snapshot()?;
    let mut out = Report { data: VVec::new() };
    match kind {
        COVERAGE => coverage(&mut out, &s)?,
        DRCOV => drcov(&mut out, &s)?,
        COUNTS => counts(&mut out, &mut s)?,
        _ => return Err(EINVAL),
    }
    Ok(out)
}

fn control_snapshot() -> Result<Snapshot> {
    crate::control::with_client_data(snapshot)?
}

/// Builds report `kind` for an opening file: a report pointer, or an error
/// pointer (`ERR_PTR`).
#[no_mangle]
unsafe extern "C" fn kdbt_report_build(kind: core::ffi::c_long) -> *mut core::ffi::c_void {
    let r = usize::try_from(kind).map_err(|_| EINVAL).and_then(build).and_then(|r| Ok(KBox::new(r, GFP)?));
    match r {
        Ok(b) => KBox::into_raw(b).cast(),
        Err(e) => e.to_errno() as isize as *mut core::ffi::c_void,
    }
}

/// A built report's bytes and their length.
#[no_mangle]
unsafe extern "C" fn kdbt_report_bytes(report: *mut core::ffi::c_void, len: *mut usize) -> *const u8 {
    // SAFETY: `report` came from `kdbt_report_build` and is not yet freed;
    // `len` is the caller's valid out-pointer.
    unsafe {
        let r = &*report.cast::<Report>();
        *len = r.data.len();
        r.data.as_ptr()
    }
}

/// Frees a report built by `kdbt_report_build`.
#[no_mangle]
unsafe extern "C" fn kdbt_report_free(report: *mut core::ffi::c_void) {
    // SAFETY: `report` came from `KBox::into_raw` in `kdbt_report_build` and
    // is freed once, when its file is released.
    drop(unsafe { KBox::from_raw(report.cast::<Report>()) });
}
