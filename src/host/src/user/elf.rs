//! The little of ELF64 that loading a static, non-PIE x86-64 executable needs.

use std::fmt;

const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PHDR_SIZE: usize = 56;

/// Segment permission bits as ELF spells them (`p_flags`).
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// Why a file is not an executable this loader can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    Truncated,
    NotElf64LittleEndian,
    NotX86_64,
    /// Only `ET_EXEC` is accepted: a PIE or shared object would need relocation.
    NotStaticExecutable(u16),
    NoLoadSegment,
    BadSegment(u64),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Truncated => write!(f, "file is truncated"),
            ElfError::NotElf64LittleEndian => write!(f, "not a little-endian ELF64 file"),
            ElfError::NotX86_64 => write!(f, "not an x86-64 executable"),
            ElfError::NotStaticExecutable(t) => {
                write!(
                    f,
                    "e_type {t} is not ET_EXEC (only static non-PIE executables run)"
                )
            }
            ElfError::NoLoadSegment => write!(f, "no PT_LOAD segment"),
            ElfError::BadSegment(v) => write!(f, "PT_LOAD at {v:#x} is inconsistent"),
        }
    }
}

/// One `PT_LOAD` segment: `filesz` bytes of the file at `offset` go to `vaddr`; the rest
/// of `memsz` is zero. Guaranteed by [`parse`]: `filesz <= memsz`, the file bytes exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub flags: u32,
}

/// A validated static x86-64 executable: entry point, program headers and load segments.
#[derive(Debug, Clone)]
pub struct Executable {
    pub entry: u64,
    /// File offset, entry size and count of the program header table (for `AT_PHDR` & co).
    pub phoff: u64,
    pub phentsize: u16,
    pub phnum: u16,
    pub segments: Vec<Segment>,
}

impl Executable {
    /// The guest address where the program header table is mapped, if a load segment
    /// covers it (glibc finds `PT_TLS` through `AT_PHDR`).
    pub fn phdr_addr(&self) -> Option<u64> {
        let table_end = self.phoff + u64::from(self.phentsize) * u64::from(self.phnum);
        self.segments
            .iter()
            .find(|s| s.offset <= self.phoff && table_end <= s.offset + s.filesz)
            .map(|s| s.vaddr + (self.phoff - s.offset))
    }

    /// The first address past every segment: where the program break starts.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.vaddr + s.memsz)
            .max()
            .unwrap_or(0)
    }
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    let s = b.get(off..off + 2).ok_or(ElfError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    let s = b.get(off..off + 4).ok_or(ElfError::Truncated)?;
    Ok(u32::from_le_bytes(s.try_into().expect("slice of 4")))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    let s = b.get(off..off + 8).ok_or(ElfError::Truncated)?;
    Ok(u64::from_le_bytes(s.try_into().expect("slice of 8")))
}

/// Parses and validates `image` as a static non-PIE x86-64 ELF executable.
pub fn parse(image: &[u8]) -> Result<Executable, ElfError> {
    if image.len() < 64 {
        return Err(ElfError::Truncated);
    }
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if image[..4] != *b"\x7fELF" || image[4] != 2 || image[5] != 1 {
        return Err(ElfError::NotElf64LittleEndian);
    }
    let e_type = u16_at(image, 16)?;
    if u16_at(image, 18)? != EM_X86_64 {
        return Err(ElfError::NotX86_64);
    }
    if e_type != ET_EXEC {
        return Err(ElfError::NotStaticExecutable(e_type));
    }
    let entry = u64_at(image, 24)?;
    let phoff = u64_at(image, 32)?;
    let phentsize = u16_at(image, 54)?;
    let phnum = u16_at(image, 56)?;
    if usize::from(phentsize) < PHDR_SIZE {
        return Err(ElfError::Truncated);
    }
    let mut segments = Vec::new();
    for i in 0..usize::from(phnum) {
        let base = usize::try_from(phoff)
            .ok()
            .and_then(|p| p.checked_add(i * usize::from(phentsize)))
            .ok_or(ElfError::Truncated)?;
        if u32_at(image, base)? != PT_LOAD {
            continue;
        }
        let seg = Segment {
            flags: u32_at(image, base + 4)?,
            offset: u64_at(image, base + 8)?,
            vaddr: u64_at(image, base + 16)?,
            filesz: u64_at(image, base + 32)?,
            memsz: u64_at(image, base + 40)?,
        };
        let file_end = seg.offset.checked_add(seg.filesz);
        let consistent = seg.filesz <= seg.memsz
            && file_end.is_some_and(|e| e <= image.len() as u64)
            && seg.vaddr.checked_add(seg.memsz).is_some();
        if !consistent {
            return Err(ElfError::BadSegment(seg.vaddr));
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        return Err(ElfError::NoLoadSegment);
    }
    Ok(Executable {
        entry,
        phoff,
        phentsize,
        phnum,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF header plus one PT_LOAD header, patched by each test.
    fn tiny_elf() -> Vec<u8> {
        let mut b = vec![0u8; 64 + PHDR_SIZE + 16];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[24..32].copy_from_slice(&0x401000u64.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let p = 64;
        b[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[p + 4..p + 8].copy_from_slice(&(PF_R | PF_X).to_le_bytes());
        b[p + 16..p + 24].copy_from_slice(&0x400000u64.to_le_bytes());
        let len = b.len() as u64;
        b[p + 32..p + 40].copy_from_slice(&len.to_le_bytes());
        b[p + 40..p + 48].copy_from_slice(&(len + 0x100).to_le_bytes());
        b
    }

    #[test]
    fn parses_a_static_executable_and_maps_its_phdrs() {
        let exe = parse(&tiny_elf()).unwrap();
        assert_eq!(exe.entry, 0x401000);
        assert_eq!(exe.segments.len(), 1);
        assert_eq!(exe.phdr_addr(), Some(0x400040));
        assert_eq!(exe.end(), 0x400000 + tiny_elf().len() as u64 + 0x100);
    }

    #[test]
    fn rejects_a_pie() {
        let mut b = tiny_elf();
        b[16..18].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(parse(&b).unwrap_err(), ElfError::NotStaticExecutable(3));
    }

    #[test]
    fn rejects_a_segment_reaching_past_the_file() {
        let mut b = tiny_elf();
        let too_long = b.len() as u64 + 1;
        b[64 + 32..64 + 40].copy_from_slice(&too_long.to_le_bytes());
        assert_eq!(parse(&b).unwrap_err(), ElfError::BadSegment(0x400000));
    }

    #[test]
    fn rejects_every_truncation_without_panicking() {
        let b = tiny_elf();
        for len in 0..64 + PHDR_SIZE {
            assert!(parse(&b[..len]).is_err(), "accepted {len} bytes");
        }
    }

    #[test]
    fn parses_busybox() {
        let image = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian busybox-static)");
        let exe = parse(&image).unwrap();
        assert!(exe.segments.iter().any(|s| s.flags & PF_X != 0));
        assert!(exe.phdr_addr().is_some());
    }
}
