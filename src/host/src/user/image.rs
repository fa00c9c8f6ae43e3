//! Maps a static executable at its link addresses, as the kernel's ELF loader would.

use super::elf::{Executable, Segment, PF_R, PF_W, PF_X};
use std::io;

pub const PAGE: u64 = 4096;

pub fn page_down(a: u64) -> u64 {
    a & !(PAGE - 1)
}

pub fn page_up(a: u64) -> u64 {
    page_down(a + PAGE - 1)
}

/// Maps `len` bytes of zeroed private memory exactly at `addr`, failing rather than
/// replacing anything already mapped there (the runner's own mappings must survive).
pub fn map_fixed(addr: u64, len: u64, prot: i32, extra_flags: i32) -> io::Result<()> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE | extra_flags;
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory the
    // runner uses can be affected; the result is checked before anyone touches it.
    let got = unsafe { libc::mmap(addr as *mut libc::c_void, len as usize, prot, flags, -1, 0) };
    if got == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if got as u64 != addr {
        // A kernel older than 4.17 treats the flag as a hint; undo the misplaced mapping.
        // SAFETY: `got` is the mapping just created, of `len` bytes, used by nobody.
        unsafe { libc::munmap(got, len as usize) };
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{addr:#x} is taken"),
        ));
    }
    Ok(())
}

fn prot_of(flags: u32) -> i32 {
    let mut prot = libc::PROT_NONE;
    if flags & PF_R != 0 {
        prot |= libc::PROT_READ;
    }
    if flags & PF_W != 0 {
        prot |= libc::PROT_WRITE;
    }
    if flags & PF_X != 0 {
        prot |= libc::PROT_EXEC;
    }
    prot
}

/// A guest executable loaded into this process. Guarantees: every `PT_LOAD` segment is
/// mapped at its virtual address with its file bytes, zeros up to `memsz` (bss) and its
/// own protection; the program break region `[brk_start, brk_limit)` is reserved, zeroed
/// and writable. The mappings live as long as the process: load once per (child) process.
#[derive(Debug, Clone, Copy)]
pub struct Image {
    pub entry: u64,
    pub phdr: u64,
    pub phent: u16,
    pub phnum: u16,
    pub brk_start: u64,
    pub brk_limit: u64,
}

/// Loads `exe` (parsed from `file`) and reserves `brk_reserve` bytes of program break.
pub fn load(exe: &Executable, file: &[u8], brk_reserve: u64) -> io::Result<Image> {
    let low = exe
        .segments
        .iter()
        .map(|s| page_down(s.vaddr))
        .min()
        .expect("parse checks");
    let high = page_up(exe.end());
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    map_fixed(low, high - low, rw, 0)?;
    for seg in &exe.segments {
        copy_segment(seg, file);
    }
    // Protections are applied only after every copy, since segments may share a page.
    for seg in &exe.segments {
        let start = page_down(seg.vaddr);
        let len = page_up(seg.vaddr + seg.memsz) - start;
        // SAFETY: the range lies inside the mapping created above, which only the guest uses.
        let rc =
            unsafe { libc::mprotect(start as *mut libc::c_void, len as usize, prot_of(seg.flags)) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    map_fixed(high, brk_reserve, rw, libc::MAP_NORESERVE)?;
    let phdr = exe.phdr_addr().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "program headers are not in a load segment",
        )
    })?;
    Ok(Image {
        entry: exe.entry,
        phdr,
        phent: exe.phentsize,
        phnum: exe.phnum,
        brk_start: high,
        brk_limit: high + brk_reserve,
    })
}

fn copy_segment(seg: &Segment, file: &[u8]) {
    let src = &file[seg.offset as usize..(seg.offset + seg.filesz) as usize];
    // SAFETY: `parse` guarantees the file range exists; the destination lies in the
    // fresh writable mapping made by `load`, which no Rust reference aliases.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), seg.vaddr as *mut u8, src.len()) };
}

/// Maps a fresh guest stack of `len` bytes anywhere and returns its top (highest) address.
pub fn map_stack(len: u64) -> io::Result<u64> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a new anonymous mapping at a kernel-chosen address cannot alias anything.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), len as usize, prot, flags, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(base as u64 + len)
}
