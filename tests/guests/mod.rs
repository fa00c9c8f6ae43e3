//! Guest functions compiled by rustc that the tests run translated and natively: loops,
//! recursion, deep call chains, function pointers, jump tables, libc calls with a callback
//! into guest code, RIP-relative data, flags across blocks, `loop`/`jrcxz`.

#![allow(dead_code)] // each test crate uses a subset of this module

use std::arch::asm;
use std::hint::black_box;
use std::sync::Mutex;

pub type Guest = extern "C" fn(u64, u64) -> u64;

#[inline(never)]
pub extern "C" fn sum_loop(n: u64, step: u64) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i < n {
        s = s.wrapping_mul(31).wrapping_add(black_box(i) ^ step);
        i += 1;
    }
    s
}

#[inline(never)]
pub extern "C" fn fib(n: u64, _: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1, 0) + fib(n - 2, 0)
    }
}

#[inline(never)]
pub extern "C" fn chain_a(depth: u64, acc: u64) -> u64 {
    if depth == 0 {
        acc
    } else {
        chain_b(depth - 1, acc.wrapping_mul(3).wrapping_add(1))
    }
}

#[inline(never)]
pub extern "C" fn chain_b(depth: u64, acc: u64) -> u64 {
    if depth == 0 {
        acc
    } else {
        // Not a tail call: the result is used after the return.
        chain_a(depth - 1, acc ^ 0x55).wrapping_add(depth)
    }
}

#[inline(never)]
pub extern "C" fn op_add(a: u64) -> u64 {
    a.wrapping_add(7)
}
#[inline(never)]
pub extern "C" fn op_mul(a: u64) -> u64 {
    a.wrapping_mul(13)
}
#[inline(never)]
pub extern "C" fn op_xor(a: u64) -> u64 {
    a ^ 0xdead_beef
}
#[inline(never)]
pub extern "C" fn op_rot(a: u64) -> u64 {
    a.rotate_left(17)
}

static OPS: [extern "C" fn(u64) -> u64; 4] = [op_add, op_mul, op_xor, op_rot];

#[inline(never)]
pub extern "C" fn function_pointers(n: u64, seed: u64) -> u64 {
    let mut v = seed;
    for i in 0..n {
        let f = black_box(OPS[(i as usize ^ v as usize) % 4]);
        v = f(v);
    }
    v
}

#[inline(never)]
pub extern "C" fn jump_table(n: u64, seed: u64) -> u64 {
    let mut v = seed;
    for i in 0..n {
        v = match black_box((v ^ i) % 12) {
            0 => v.wrapping_add(1),
            1 => v.wrapping_mul(3),
            2 => v ^ 0x1234,
            3 => v.rotate_right(5),
            4 => v.wrapping_sub(99),
            5 => v.wrapping_mul(7).wrapping_add(i),
            6 => !v,
            7 => v.wrapping_add(v >> 3),
            8 => v ^ (v << 7),
            9 => v.wrapping_add(0x9e37_79b9),
            10 => v.swap_bytes(),
            _ => v.wrapping_mul(0x2545_f491),
        };
    }
    v
}

extern "C" fn compare_u32(a: *const libc::c_void, b: *const libc::c_void) -> i32 {
    // SAFETY: qsort passes pointers to elements of the u32 array being sorted.
    let (a, b) = unsafe { (*(a as *const u32), *(b as *const u32)) };
    a.cmp(&b) as i32
}

/// libc calls, including a callback from libc (qsort) back into guest code.
#[inline(never)]
pub extern "C" fn libc_calls(n: u64, seed: u64) -> u64 {
    let n = (n as usize).clamp(1, 256);
    // SAFETY: malloc'd buffers of the sizes used; every pointer stays in bounds.
    unsafe {
        let buf = libc::malloc(n * 4) as *mut u32;
        let mut x = seed as u32 | 1;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *buf.add(i) = x;
        }
        libc::qsort(buf.cast(), n, 4, Some(compare_u32));
        let copy = libc::malloc(n * 4) as *mut u32;
        libc::memcpy(copy.cast(), buf.cast(), n * 4);
        let mut text = [0u8; 64];
        let len = libc::snprintf(
            text.as_mut_ptr().cast(),
            64,
            c"%u-%u".as_ptr(),
            *copy,
            *copy.add(n - 1),
        );
        let mut h = len as u64 ^ libc::strlen(text.as_ptr().cast()) as u64;
        for i in 0..n {
            h = h
                .wrapping_mul(1_000_003)
                .wrapping_add(u64::from(*copy.add(i)));
        }
        libc::free(copy.cast());
        libc::free(buf.cast());
        h
    }
}

static TABLE: [u64; 16] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3];
static mut SCRATCH: [u64; 64] = [0; 64];
pub static LOCK: Mutex<()> = Mutex::new(());

/// RIP-relative reads of a static table and writes to a static array.
#[inline(never)]
pub extern "C" fn rip_relative_data(n: u64, seed: u64) -> u64 {
    let mut acc = seed;
    // SAFETY: callers hold LOCK, so SCRATCH is not accessed concurrently.
    unsafe {
        let scratch = &mut *std::ptr::addr_of_mut!(SCRATCH);
        for (i, slot) in scratch.iter_mut().enumerate() {
            *slot = i as u64;
        }
        for i in 0..n as usize {
            scratch[i % 64] = TABLE[i % 16].wrapping_mul(acc);
            acc = acc.wrapping_add(scratch[(i * 7) % 64]).rotate_left(3);
        }
    }
    acc
}

/// Flags set in one block and consumed in another: `cmp` then a `jmp` (block end, exit
/// stub or link) then `setb`/`adc`; and `loop`/`jrcxz`, which only have rel8 forms.
#[inline(never)]
pub extern "C" fn flags_across_blocks(a: u64, b: u64) -> u64 {
    let out: u64;
    // SAFETY: register-only arithmetic and local jumps.
    unsafe {
        asm!(
            "xor {out:e}, {out:e}",
            "cmp {a}, {b}",
            "jmp 2f",
            "2:",
            "setb {out:l}",
            "add {a}, {b}",
            "jmp 3f",
            "3:",
            "adc {out}, 0",
            "shl {out}, 8",
            "mov rcx, 5",
            "4:",
            "inc {out}",
            "loop 4b",
            "jrcxz 5f",
            "add {out}, 1000",
            "5:",
            "stc",
            "jmp 6f",
            "6:",
            "adc {out}, 0",
            a = inout(reg) a => _,
            b = in(reg) b,
            out = out(reg) out,
            out("rcx") _,
        );
    }
    out
}

/// Calls through a RIP-relative function pointer slot and an indirect jump through a
/// register.
#[inline(never)]
pub extern "C" fn indirect_forms(n: u64, seed: u64) -> u64 {
    static SLOT: extern "C" fn(u64) -> u64 = op_mul;
    let mut v = seed;
    for _ in 0..n {
        v = (black_box(SLOT))(v);
        v = black_box(&OPS)[(v % 4) as usize](v);
    }
    v
}

pub fn cases() -> Vec<(&'static str, Guest, u64, u64)> {
    vec![
        ("sum_loop", sum_loop, 1000, 5),
        ("fib", fib, 18, 0),
        ("deep_chain", chain_a, 3000, 1),
        ("function_pointers", function_pointers, 500, 42),
        ("jump_table", jump_table, 2000, 7),
        ("libc_calls", libc_calls, 200, 99),
        ("rip_relative_data", rip_relative_data, 300, 11),
        ("flags_across_blocks_lt", flags_across_blocks, 1, 2),
        ("flags_across_blocks_ge", flags_across_blocks, u64::MAX, 2),
        ("indirect_forms", indirect_forms, 100, 3),
    ]
}
