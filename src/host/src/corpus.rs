//! A large body of real code for engine tests and benchmarks: an executable's `.text`.

/// `.text` of an ELF64 file: (virtual address, bytes).
pub fn text_section(elf: &[u8]) -> Option<(u64, &[u8])> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let section = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(section(shstrndx) + 0x18)? as usize;
    (0..shnum).find_map(|i| {
        let sh = section(i);
        let name = strtab + u32_at(sh)? as usize;
        if elf.get(name..name + 6)? != b".text\0" {
            return None;
        }
        let (addr, off, size) = (
            u64_at(sh + 0x10)?,
            u64_at(sh + 0x18)? as usize,
            u64_at(sh + 0x20)? as usize,
        );
        Some((addr, elf.get(off..off + size)?))
    })
}
