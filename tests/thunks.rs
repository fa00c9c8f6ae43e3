//! The kernel's mitigation thunks under translation: code that calls through retpolines
//! and returns through a return thunk runs correctly whether or not the translator knows
//! the thunks, and when it knows them it never translates them: each call or jump to a
//! thunk becomes the branch it stands for.

use std::ptr;

use kdbt_engine::{CallRetPolicy, ThunkArray, Thunks};
use kdbt_host::{Options, Runtime};

const PAGE: usize = 4096;
const G: usize = 0x80;
const H: usize = 0xa0;
const ARRAY: usize = 0x100;
const STRIDE: usize = 32;
const RET_THUNK: usize = 0x400;

fn rel32(code: &mut [u8], at: usize, target: usize) {
    let rel = (target as i64 - (at as i64 + 4)) as i32;
    code[at..at + 4].copy_from_slice(&rel.to_le_bytes());
}

/// `f` returns 42 by calling `g` (41) through `rax`'s retpoline and `h` (+1) through
/// `r11`'s, and every function returns through the return thunk.
fn guest_code() -> Vec<u8> {
    let mut c = vec![0xcc; 0x500];
    let f = [
        0x48, 0x8d, 0x05, 0, 0, 0, 0, // 0x00 lea rax, [rip + g]
        0xe8, 0, 0, 0, 0, // 0x07 call thunk_rax
        0x4c, 0x8d, 0x1d, 0, 0, 0, 0, // 0x0c lea r11, [rip + h]
        0xe8, 0, 0, 0, 0, // 0x13 call thunk_r11
        0xe9, 0, 0, 0, 0, // 0x18 jmp ret_thunk
    ];
    c[..f.len()].copy_from_slice(&f);
    rel32(&mut c, 0x03, G);
    rel32(&mut c, 0x08, ARRAY);
    rel32(&mut c, 0x0f, H);
    rel32(&mut c, 0x14, ARRAY + 11 * STRIDE);
    rel32(&mut c, 0x19, RET_THUNK);
    // g: mov eax, 41; jmp ret_thunk    h: lea rax, [rax + 1]; jmp ret_thunk
    c[G..G + 10].copy_from_slice(&[0xb8, 41, 0, 0, 0, 0xe9, 0, 0, 0, 0]);
    rel32(&mut c, G + 6, RET_THUNK);
    c[H..H + 9].copy_from_slice(&[0x48, 0x8d, 0x40, 0x01, 0xe9, 0, 0, 0, 0]);
    rel32(&mut c, H + 5, RET_THUNK);
    // The retpoline of register n: call 1f; int3; 1: mov [rsp], reg_n; ret
    for n in 0..16u8 {
        let t = ARRAY + n as usize * STRIDE;
        let mov = [0x48 | (n >> 3) << 2, 0x89, 0x04 | (n & 7) << 3, 0x24];
        c[t..t + 6].copy_from_slice(&[0xe8, 1, 0, 0, 0, 0xcc]);
        c[t + 6..t + 10].copy_from_slice(&mov);
        c[t + 10] = 0xc3;
    }
    c[RET_THUNK] = 0xc3;
    c
}

/// The guest code on a fresh executable page.
struct Guest {
    base: *mut u8,
}

impl Guest {
    fn new() -> Self {
        let code = guest_code();
        assert!(code.len() <= PAGE);
        // SAFETY: a fresh anonymous RWX page; the code is copied into it.
        unsafe {
            let prot = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            let p = libc::mmap(ptr::null_mut(), PAGE, prot, flags, -1, 0);
            assert_ne!(p, libc::MAP_FAILED);
            ptr::copy_nonoverlapping(code.as_ptr(), p.cast::<u8>(), code.len());
            Guest { base: p.cast() }
        }
    }

    fn at(&self, off: usize) -> u64 {
        self.base as u64 + off as u64
    }

    fn thunks(&self) -> Thunks {
        let mut t = Thunks::NONE;
        t.returns[0] = self.at(RET_THUNK);
        t.indirect[0] = ThunkArray {
            base: self.at(ARRAY),
            stride: STRIDE as u64,
        };
        t
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `new`.
        unsafe {
            libc::munmap(self.base.cast(), PAGE);
        }
    }
}

fn runtime(policy: CallRetPolicy, thunks: Thunks) -> Runtime {
    let mut opts = Options::new(policy);
    opts.thunks = thunks;
    Runtime::new(opts).expect("runtime")
}

#[test]
fn recognised_thunks_are_never_translated_and_the_result_is_native() {
    let guest = Guest::new();
    let native = runtime(CallRetPolicy::Transparent, Thunks::NONE)
        .run_native(guest.at(0), &[])
        .expect("native");
    assert_eq!(native, 42);
    let thunk_pcs = [
        guest.at(ARRAY),
        guest.at(ARRAY + 11 * STRIDE),
        guest.at(RET_THUNK),
    ];
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let mut literal = runtime(policy, Thunks::NONE);
        assert_eq!(
            literal.run(guest.at(0), &[]).expect("run"),
            42,
            "{policy:?}"
        );
        let mut aliased = runtime(policy, guest.thunks());
        assert_eq!(
            aliased.run(guest.at(0), &[]).expect("run"),
            42,
            "{policy:?}"
        );
        // Followed literally, the retpolines are translated; recognised, none of them is.
        assert!(
            literal.cache().lookup(guest.at(ARRAY)).is_some(),
            "{policy:?}"
        );
        for pc in &thunk_pcs[..2] {
            assert!(aliased.cache().lookup(*pc).is_none(), "{policy:?} {pc:#x}");
        }
        let (lit, ali) = (literal.cache().stats(), aliased.cache().stats());
        assert!(ali.blocks < lit.blocks, "{policy:?}");
    }
    // The transparent policy translates a jmp to the return thunk as its own `ret`.
    let mut aliased = runtime(CallRetPolicy::Transparent, guest.thunks());
    aliased.run(guest.at(0), &[]).expect("run");
    assert!(aliased.cache().lookup(thunk_pcs[2]).is_none());
}
