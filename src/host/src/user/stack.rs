//! The initial process stack that the kernel hands to `_start`: argc, argv, envp, auxv and
//! the strings they point to.

use super::image::{Image, PAGE};

const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const AT_PAGESZ: u64 = 6;
const AT_BASE: u64 = 7;
const AT_FLAGS: u64 = 8;
const AT_ENTRY: u64 = 9;
const AT_UID: u64 = 11;
const AT_EUID: u64 = 12;
const AT_GID: u64 = 13;
const AT_EGID: u64 = 14;
const AT_PLATFORM: u64 = 15;
const AT_HWCAP: u64 = 16;
const AT_CLKTCK: u64 = 17;
const AT_SECURE: u64 = 23;
const AT_RANDOM: u64 = 25;
const AT_HWCAP2: u64 = 26;
const AT_EXECFN: u64 = 31;
const AT_MINSIGSTKSZ: u64 = 51;

/// The auxiliary vector entries that carry plain values for `image`. `AT_SYSINFO_EHDR` is
/// left out on purpose: without it glibc makes real syscalls instead of entering the
/// runner's vDSO, so every system call passes through the syscall hook.
pub fn value_aux(image: &Image) -> Vec<(u64, u64)> {
    // SAFETY: getauxval and the get*id calls only read process state.
    let (hwcap, hwcap2, minsig, ids) = unsafe {
        (
            libc::getauxval(AT_HWCAP),
            libc::getauxval(AT_HWCAP2),
            libc::getauxval(AT_MINSIGSTKSZ),
            [
                libc::getuid(),
                libc::geteuid(),
                libc::getgid(),
                libc::getegid(),
            ],
        )
    };
    let mut aux = vec![
        (AT_PHDR, image.phdr),
        (AT_PHENT, u64::from(image.phent)),
        (AT_PHNUM, u64::from(image.phnum)),
        (AT_PAGESZ, PAGE),
        (AT_BASE, 0),
        (AT_FLAGS, 0),
        (AT_ENTRY, image.entry),
        (AT_UID, u64::from(ids[0])),
        (AT_EUID, u64::from(ids[1])),
        (AT_GID, u64::from(ids[2])),
        (AT_EGID, u64::from(ids[3])),
        (AT_SECURE, 0),
        (AT_CLKTCK, 100),
        (AT_HWCAP, hwcap),
        (AT_HWCAP2, hwcap2),
    ];
    if minsig != 0 {
        aux.push((AT_MINSIGSTKSZ, minsig));
    }
    aux
}

/// A ready initial stack: `bytes` belong at `[rsp, top)`. Guarantees: `rsp` is 16-byte
/// aligned and points at argc; argv and envp are NULL-terminated; auxv ends in `AT_NULL`
/// and also holds `AT_RANDOM`, `AT_PLATFORM` and `AT_EXECFN` pointing into `bytes`.
#[derive(Debug, Clone)]
pub struct InitialStack {
    pub rsp: u64,
    pub bytes: Vec<u8>,
}

impl InitialStack {
    /// Lays out the stack that ends at `top` (exclusive).
    pub fn build(
        top: u64,
        args: &[Vec<u8>],
        env: &[Vec<u8>],
        aux: &[(u64, u64)],
        random: [u8; 16],
    ) -> InitialStack {
        // Strings go at the top, growing down, NUL-terminated; `at` is the lowest byte so far.
        let mut strings: Vec<u8> = Vec::new();
        let mut at = top;
        let mut push = |bytes: &[u8], nul: bool| -> u64 {
            let mut piece = bytes.to_vec();
            if nul {
                piece.push(0);
            }
            at -= piece.len() as u64;
            piece.extend_from_slice(&strings);
            strings = piece;
            at
        };
        let execfn = push(args.first().map_or(&b""[..], |a| &a[..]), true);
        let env_ptrs: Vec<u64> = env.iter().rev().map(|e| push(e, true)).collect();
        let arg_ptrs: Vec<u64> = args.iter().rev().map(|a| push(a, true)).collect();
        let platform = push(b"x86_64", true);
        let random_at = push(&random, false);

        let mut words: Vec<u64> = vec![args.len() as u64];
        words.extend(arg_ptrs.iter().rev());
        words.push(0);
        words.extend(env_ptrs.iter().rev());
        words.push(0);
        for &(k, v) in aux {
            words.extend([k, v]);
        }
        words.extend([
            AT_RANDOM,
            random_at,
            AT_PLATFORM,
            platform,
            AT_EXECFN,
            execfn,
            AT_NULL,
            0,
        ]);

        let table_len = words.len() as u64 * 8;
        let rsp = (at - table_len) & !15;
        let mut bytes = vec![0u8; (top - rsp) as usize];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let strings_off = (at - rsp) as usize;
        bytes[strings_off..].copy_from_slice(&strings);
        InitialStack { rsp, bytes }
    }

    /// Copies the stack into guest memory below `top`.
    ///
    /// # Safety
    /// `[self.rsp, self.rsp + bytes.len())` must be writable memory that nothing else uses.
    pub unsafe fn write(&self) {
        // SAFETY: the caller guarantees the destination range.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.bytes.as_ptr(),
                self.rsp as *mut u8,
                self.bytes.len(),
            )
        };
    }
}

/// Sixteen bytes from the kernel's random pool for `AT_RANDOM` (glibc's stack guard).
pub fn random16() -> [u8; 16] {
    let mut r = [0u8; 16];
    // SAFETY: writes at most 16 bytes into `r`.
    let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    assert_eq!(n, 16, "getrandom failed");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: u64 = 0x7fff_0000_1000;

    fn word(s: &InitialStack, addr: u64) -> u64 {
        let o = (addr - s.rsp) as usize;
        u64::from_le_bytes(s.bytes[o..o + 8].try_into().unwrap())
    }

    fn c_string(s: &InitialStack, addr: u64) -> Vec<u8> {
        let o = (addr - s.rsp) as usize;
        s.bytes[o..]
            .iter()
            .take_while(|&&b| b != 0)
            .copied()
            .collect()
    }

    fn sample() -> InitialStack {
        let args = vec![b"busybox".to_vec(), b"sort".to_vec(), b"in.txt".to_vec()];
        let env = vec![b"LC_ALL=C".to_vec()];
        InitialStack::build(TOP, &args, &env, &[(AT_PAGESZ, 4096)], [7; 16])
    }

    #[test]
    fn argc_argv_and_envp_read_back_as_given() {
        let s = sample();
        assert_eq!(s.rsp % 16, 0);
        assert_eq!(s.rsp + s.bytes.len() as u64, TOP);
        assert_eq!(word(&s, s.rsp), 3);
        assert_eq!(c_string(&s, word(&s, s.rsp + 8)), b"busybox");
        assert_eq!(c_string(&s, word(&s, s.rsp + 24)), b"in.txt");
        assert_eq!(word(&s, s.rsp + 32), 0);
        assert_eq!(c_string(&s, word(&s, s.rsp + 40)), b"LC_ALL=C");
        assert_eq!(word(&s, s.rsp + 48), 0);
    }

    #[test]
    fn auxv_ends_with_pointers_into_the_stack_and_at_null() {
        let s = sample();
        let mut aux = Vec::new();
        let mut a = s.rsp + 56;
        loop {
            let (k, v) = (word(&s, a), word(&s, a + 8));
            aux.push((k, v));
            a += 16;
            if k == AT_NULL {
                break;
            }
        }
        assert_eq!(aux[0], (AT_PAGESZ, 4096));
        let find = |k| aux.iter().find(|e| e.0 == k).unwrap().1;
        let random = find(AT_RANDOM);
        assert!(random > a && random + 16 <= TOP);
        assert_eq!(s.bytes[(random - s.rsp) as usize..][..16], [7; 16]);
        assert_eq!(c_string(&s, find(AT_PLATFORM)), b"x86_64");
        assert_eq!(c_string(&s, find(AT_EXECFN)), b"busybox");
    }
}
