//! Precise guest state: faults and traps raised inside translated multi-instruction
//! sequences are mapped by the PC map and rollback to exactly the state of the same fault
//! raised natively (both captured from the signal's ucontext), and single-stepping through
//! translated code only ever shows (after rollback) states the native run also shows.

mod common;

use std::hint::black_box;
use std::ptr;

use kdbt_engine::{CallRetPolicy, Frame, Gpr, HookClass, IblSize};
use kdbt_host::{HookAction, Options, Placement, RunError, Runtime};

use common::FLAGS;

/// Hand-assembled guest code on an executable page followed by an inaccessible page.
struct GuestCode {
    base: *mut u8,
}

const PAGE: usize = 4096;

impl GuestCode {
    fn new(code: &[u8]) -> Self {
        assert!(code.len() <= PAGE);
        // SAFETY: a fresh anonymous 2-page mapping; the code is copied into the first page
        // and the second is made inaccessible.
        unsafe {
            let prot = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
            let p = libc::mmap(
                ptr::null_mut(),
                2 * PAGE,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let base = p.cast::<u8>();
            ptr::copy_nonoverlapping(code.as_ptr(), base, code.len());
            assert_eq!(
                libc::mprotect(base.add(PAGE).cast(), PAGE, libc::PROT_NONE),
                0
            );
            GuestCode { base }
        }
    }

    fn addr(&self) -> u64 {
        self.base as u64
    }

    fn guard(&self) -> u64 {
        self.addr() + PAGE as u64
    }
}

impl Drop for GuestCode {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`.
        unsafe {
            libc::munmap(self.base.cast(), 2 * PAGE);
        }
    }
}

/// Gives every register a distinctive value and sets CF, so a wrong restore shows.
fn prologue() -> Vec<u8> {
    let mut c = Vec::new();
    for (prefix, modrm, value) in [
        (0x48u8, 0xc3u8, 0x0111_1111u32),
        (0x48, 0xc5, 0x0222_2222),
        (0x49, 0xc2, 0x0333_3333),
        (0x49, 0xc3, 0x0444_4444),
        (0x49, 0xc4, 0x0555_5555),
        (0x49, 0xc5, 0x0666_6666),
        (0x49, 0xc6, 0x0777_7777),
        (0x49, 0xc7, 0x0888_8888),
    ] {
        c.extend([prefix, 0xc7, modrm]);
        c.extend(value.to_le_bytes());
    }
    c.push(0xf9); // stc
    c
}

const ARGS: [u64; 6] = [0x10, 0xa1a1, 0xb2b2, 0xc3c3, 0xd4d4, 0xe5e5];

/// Red zones tested: the user-space one and the kernel's (0). The guest code here never
/// uses a red zone, so both must behave identically.
const RED_ZONES: [u32; 2] = [128, 0];

fn runtime(policy: CallRetPolicy, placement: Placement, red_zone: u32) -> Runtime {
    let mut opts = Options::new(policy);
    opts.placement = placement;
    opts.red_zone = red_zone;
    Runtime::new(opts).expect("runtime")
}

fn native_trap(rt: &mut Runtime, entry: u64, args: &[u64]) -> Frame {
    match rt.run_native(entry, args) {
        Err(RunError::Signal(t)) => t.frame,
        other => panic!("native run did not fault: {other:?}"),
    }
}

fn assert_same_state(native: &Frame, guest: &Frame, what: &str) {
    for g in Gpr::ALL {
        assert_eq!(
            guest.get(g),
            native.get(g),
            "{what}: {g:?} (native {native:x?}, rolled back {guest:x?})"
        );
    }
    assert_eq!(guest.rip, native.rip, "{what}: rip");
    assert_eq!(guest.rflags & FLAGS, native.rflags & FLAGS, "{what}: flags");
}

/// Runs `code` natively and translated (both policies, both red zones, given placement);
/// the translated fault must be inside the cache, and roll back to the native fault's
/// state. Returns how many translated faults needed a non-trivial rollback.
fn check_fault(
    code: &[u8],
    args: &[u64],
    signo: i32,
    placement: impl Fn(u64) -> Placement,
) -> usize {
    let guest = GuestCode::new(code);
    let mut nontrivial = 0;
    for (policy, red_zone) in policies_and_red_zones() {
        let mut rt = runtime(policy, placement(guest.addr()), red_zone);
        let native = native_trap(&mut rt, guest.addr(), args);
        let trap = match rt.run(guest.addr(), args) {
            Err(RunError::Signal(t)) => t,
            other => panic!("translated run did not fault: {other:?}"),
        };
        assert_eq!(trap.signo, signo);
        assert!(
            rt.cache().contains(trap.frame.rip),
            "fault outside the cache: {:#x}",
            trap.frame.rip
        );
        let (mapping, state) = rt
            .guest_state(&trap.frame)
            .expect("fault address maps back");
        let rb = mapping.rollback;
        if rb.restore.iter().any(Option::is_some) || rb.rsp_adjust != 0 {
            nontrivial += 1;
        }
        assert_same_state(&native, &state, &format!("{policy:?} red zone {red_zone}"));
    }
    nontrivial
}

fn policies_and_red_zones() -> impl Iterator<Item = (CallRetPolicy, u32)> {
    [CallRetPolicy::Transparent, CallRetPolicy::Fast]
        .into_iter()
        .flat_map(|p| RED_ZONES.map(|rz| (p, rz)))
}

#[test]
fn segv_in_indirect_call_through_bad_memory_rolls_back_to_the_call() {
    let mut c = prologue();
    c.extend([0x48, 0x89, 0xf8]); // mov rax, rdi
    c.extend([0xff, 0x50, 0x08]); // call [rax + 8]
    c.push(0xc3);
    // Near: the three-register lookup; Low: the two-register one (the kernel's).
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, Placement::Near), 4);
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, |_| Placement::Low), 4);
}

#[test]
fn segv_in_indirect_jmp_through_bad_memory_rolls_back_to_the_jmp() {
    let mut c = prologue();
    c.extend([0xff, 0x27]); // jmp [rdi]
                            // Near: the three-register lookup; Low: the two-register one (the kernel's).
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, Placement::Near), 4);
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, |_| Placement::Low), 4);
}

#[test]
fn segv_in_rsp_relative_indirect_call_with_a_bad_stack_rolls_back_to_the_call() {
    // Transparent: the lookup's first spill faults (after moving rsp: a rollback); Fast:
    // the real `call` into the lookup faults pushing, before anything moved.
    // Near: the three-register lookup; Low: the two-register one (the kernel's).
    let mut c = prologue();
    c.extend([0x48, 0x89, 0xfc]); // mov rsp, rdi  (rsp = 0x10)
    c.extend([0xff, 0x54, 0x24, 0x08]); // call [rsp + 8]
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, Placement::Near), 2);
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, |_| Placement::Low), 2);
}

#[test]
fn segv_in_rsp_relative_indirect_call_uses_the_guest_rsp() {
    // rsp = the guard page - 8: the stack below is writable, the operand [rsp + 8] is the
    // guard page. The lookup must address it relative to the guest rsp (under Fast, after
    // its real `call` pushed 8 bytes: + 8), not to its own spill area, and fault exactly
    // where the native call faults, the rollback popping everything pushed.
    let mut c = prologue();
    let end = c.len() + 7;
    c.extend([0x48, 0x8d, 0x05]); // lea rax, [rip + guard - 8]
    c.extend((PAGE as i64 - 8 - end as i64).to_le_bytes()[..4].iter());
    c.extend([0x48, 0x89, 0xc4]); // mov rsp, rax
    c.extend([0xff, 0x54, 0x24, 0x08]); // call [rsp + 8]
    c.push(0xc3);
    // Near: the three-register lookup; Low: the two-register one (the kernel's).
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, Placement::Near), 4);
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, |_| Placement::Low), 4);
}

#[test]
fn segv_in_ret_lookup_with_bad_stack_rolls_back_to_the_ret() {
    let mut c = prologue();
    c.extend([0x48, 0xc7, 0xc4, 0x00, 0x10, 0x00, 0x00]); // mov rsp, 0x1000
    c.push(0xc3); // ret
                  // Transparent: the lookup's first spill faults (after skipping a red zone of 128, which
                  // the rollback undoes; with red zone 0 nothing is undone); Fast: `ret` is copied.
                  // Near: the three-register lookup; Low: the two-register one (the kernel's).
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, Placement::Near), 1);
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, |_| Placement::Low), 1);
}

#[test]
fn segv_in_far_rip_relative_load_restores_the_scratch_register() {
    // The guard page is out of reach of the cache: the load goes through a scratch
    // register spilled on the stack, and faults with it spilled.
    for (opcode, name) in [
        ([0x48u8, 0x8b, 0x05], "mov rax, [rip+x]"),
        ([0x48, 0x01, 0x0d], "add [rip+x], rcx"),
    ] {
        let mut c = prologue();
        let end = c.len() + 7;
        c.extend(opcode);
        c.extend((PAGE as i64 - end as i64).to_le_bytes()[..4].iter());
        c.push(0xc3);
        assert_eq!(
            check_fault(&c, &ARGS, libc::SIGSEGV, Placement::Far),
            4,
            "{name}"
        );
    }
}

#[test]
fn near_rip_relative_fault_needs_no_rollback() {
    let mut c = prologue();
    let end = c.len() + 7;
    c.extend([0x48, 0x8b, 0x05]);
    c.extend((PAGE as i64 - end as i64).to_le_bytes()[..4].iter());
    c.push(0xc3);
    assert_eq!(check_fault(&c, &ARGS, libc::SIGSEGV, Placement::Near), 0);
}

#[test]
fn sigtrap_from_copied_int3_maps_to_the_next_instruction() {
    let mut c = prologue();
    c.push(0xcc); // int3
    c.push(0xc3);
    check_fault(&c, &ARGS, libc::SIGTRAP, Placement::Near);
}

#[test]
fn untranslatable_call_target_reports_the_native_fault_state() {
    let mut c = prologue();
    c.extend([0x48, 0x89, 0xf8]); // mov rax, rdi
    c.extend([0xff, 0xd0]); // call rax   (rax = 0x10)
    c.push(0xc3);
    let guest = GuestCode::new(&c);
    for (policy, red_zone) in policies_and_red_zones() {
        let mut rt = runtime(policy, Placement::Near(guest.addr()), red_zone);
        let native = native_trap(&mut rt, guest.addr(), &ARGS);
        match rt.run(guest.addr(), &ARGS) {
            Err(RunError::Untranslatable { state, error }) => {
                assert_eq!(error, kdbt_engine::Error::GuestMemory { pc: 0x10 });
                assert_same_state(&native, &state, &format!("{policy:?}"));
            }
            other => panic!("{other:?}"),
        }
    }
    let _ = guest.guard();
}

#[test]
fn hooked_int3_reports_pc_and_resumes_with_edited_registers() {
    // mov eax, 1; int3; add eax, 2; ret
    let c = [0xb8, 1, 0, 0, 0, 0xcc, 0x83, 0xc0, 0x02, 0xc3];
    let guest = GuestCode::new(&c);
    let at = guest.addr();
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let mut opts = Options::new(policy);
        opts.hooks = HookClass::INT3 | HookClass::SYSCALL;
        let mut rt = Runtime::new(opts).expect("runtime");
        rt.set_hook(Box::new(move |class, pc, next, state| {
            assert_eq!((class, pc, next), (HookClass::INT3, at + 5, at + 6));
            assert_eq!(state.get(Gpr::Rax), 1);
            state.set(Gpr::Rax, 40);
            HookAction::Resume(next)
        }));
        assert_eq!(rt.run(at, &[]).expect("run"), 42);
    }
}

#[test]
fn hooked_syscall_is_emulated_and_not_executed() {
    // mov eax, 39 (getpid); syscall; ret
    let c = [0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3];
    let guest = GuestCode::new(&c);
    let at = guest.addr();
    let mut opts = Options::new(CallRetPolicy::Transparent);
    opts.hooks = HookClass::SYSCALL;
    let mut rt = Runtime::new(opts).expect("runtime");
    rt.set_hook(Box::new(move |class, pc, next, state| {
        assert_eq!((class, pc, next), (HookClass::SYSCALL, at + 5, at + 7));
        state.set(Gpr::Rax, 4242);
        HookAction::Resume(next)
    }));
    assert_eq!(rt.run(at, &[]).expect("run"), 4242);
    // Not hooked: the real syscall runs.
    let mut plain = Runtime::new(Options::new(CallRetPolicy::Transparent)).expect("runtime");
    assert_eq!(plain.run(at, &[]).expect("run"), std::process::id() as u64);
}

#[test]
fn iretq_to_kernel_hook_reports_an_iretq_whose_frame_returns_to_cpl0() {
    // Build an iret frame whose CS selector has RPL 0, then iretq; `back` drops the
    // frame (the hook below resumes there without emulating the pops) and returns 7.
    //   push 0x2b; lea rax, [rsp + 8]; push rax; pushfq; push 0x30;
    //   lea rcx, [rip + 3]; push rcx; iretq; back: lea rsp, [rsp + 40]; mov eax, 7; ret
    let c = [
        0x6a, 0x2b, 0x48, 0x8d, 0x44, 0x24, 0x08, 0x50, 0x9c, 0x6a, 0x30, 0x48, 0x8d, 0x0d, 3, 0,
        0, 0, 0x51, 0x48, 0xcf, 0x48, 0x8d, 0x64, 0x24, 0x28, 0xb8, 7, 0, 0, 0, 0xc3,
    ];
    let guest = GuestCode::new(&c);
    let at = guest.addr();
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let mut opts = Options::new(policy);
        opts.hooks = HookClass::IRETQ_TO_KERNEL;
        let mut rt = Runtime::new(opts).expect("runtime");
        rt.set_hook(Box::new(move |class, pc, next, state| {
            assert_eq!((class, pc, next), (HookClass::IRETQ, at + 19, at + 21));
            let sp = state.get(Gpr::Rsp) as *const u64;
            // SAFETY: the guest just pushed the 5-word iret frame at its rsp.
            let frame = unsafe { std::slice::from_raw_parts(sp, 5) };
            assert_eq!((frame[0], frame[1], frame[4]), (at + 21, 0x30, 0x2b));
            assert_eq!(
                frame[3],
                state.get(Gpr::Rsp) + 40,
                "the frame's rsp is the pre-push rsp"
            );
            HookAction::Resume(frame[0])
        }));
        assert_eq!(rt.run(at, &[]).expect("run"), 7);
    }
}

#[test]
fn leaving_the_cache_mid_run_rewrites_every_return_site_and_goes_on_natively() {
    // f(n) = n == 0 ? (int3; 1000) : f(n - 1) + n
    //   test rdi, rdi; jne rec; int3; mov eax, 1000; ret;
    //   rec: push rdi; dec rdi; call f; pop rdi; add rax, rdi; ret
    let c = [
        0x48, 0x85, 0xff, 0x75, 0x07, 0xcc, 0xb8, 0xe8, 0x03, 0, 0, 0xc3, 0x57, 0x48, 0xff, 0xcf,
        0xe8, 0xeb, 0xff, 0xff, 0xff, 0x5f, 0x48, 0x01, 0xf8, 0xc3,
    ];
    let guest = GuestCode::new(&c);
    let at = guest.addr();
    const DEPTH: u64 = 3000;
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        for placement in [Placement::Anywhere, Placement::Low] {
            let what = format!("{policy:?} {placement:?}");
            let mut opts = Options::new(policy);
            opts.hooks = HookClass::INT3;
            opts.placement = placement;
            let mut rt = Runtime::new(opts).expect("runtime");
            let arena = rt.arena_range();
            let top = rt.stack_top();
            let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let record = seen.clone();
            rt.set_hook(Box::new(move |class, pc, next, state| {
                assert_eq!((class, pc, next), (HookClass::INT3, at + 5, at + 6));
                let mut slot = state.get(Gpr::Rsp);
                while slot < top {
                    // SAFETY: the guest stack between its rsp and its top is mapped.
                    let word = unsafe { ptr::read(slot as *const u64) };
                    if arena.contains(&word) {
                        record.borrow_mut().push(word);
                    }
                    slot += 8;
                }
                HookAction::Leave(next)
            }));
            let sum = DEPTH * (DEPTH + 1) / 2;
            assert_eq!(rt.run(at, &[DEPTH]).expect(&what), 1000 + sum, "{what}");
            let rw = rt.last_rewrite().expect("rewrite");
            let seen = seen.borrow();
            let expected = match policy {
                CallRetPolicy::Transparent => 0,
                CallRetPolicy::Fast => DEPTH as u32,
            };
            assert_eq!(rw.return_sites, expected, "{what}");
            assert_eq!(seen.len(), expected as usize, "{what}");
            assert_eq!((rw.inside_code, rw.data), (0, 0), "{what}");
            // Had a return site been left on the stack, the return would have trapped:
            // the flush filled the released code with int3.
            for &w in seen.iter() {
                // SAFETY: `w` is inside the arena, which the runtime keeps mapped.
                assert_eq!(unsafe { ptr::read(w as *const u8) }, 0xcc, "{what}");
            }
        }
    }
}

#[test]
fn hook_without_handler_stops_the_run_before_the_instruction() {
    let c = [0xb8, 7, 0, 0, 0, 0xcc, 0xc3];
    let guest = GuestCode::new(&c);
    let mut opts = Options::new(CallRetPolicy::Fast);
    opts.hooks = HookClass::INT3;
    let mut rt = Runtime::new(opts).expect("runtime");
    match rt.run(guest.addr(), &[]) {
        Err(RunError::HookStop { state }) => {
            assert_eq!(state.rip, guest.addr() + 5);
            assert_eq!(state.get(Gpr::Rax), 7);
        }
        other => panic!("{other:?}"),
    }
}

// Single-stepping: pure guest functions (no syscalls), traced natively and translated.

#[inline(never)]
extern "C" fn step_fib(n: u64, _: u64) -> u64 {
    if n < 2 {
        n
    } else {
        step_fib(n - 1, 0) + step_fib(n - 2, 0)
    }
}

#[inline(never)]
extern "C" fn step_a(x: u64) -> u64 {
    x.wrapping_mul(5) ^ 3
}
#[inline(never)]
extern "C" fn step_b(x: u64) -> u64 {
    x.rotate_left(9).wrapping_add(1)
}
static STEP_OPS: [extern "C" fn(u64) -> u64; 2] = [step_a, step_b];

#[inline(never)]
extern "C" fn step_mix(n: u64, seed: u64) -> u64 {
    let mut v = seed;
    for i in 0..n {
        v = match black_box(v ^ i) % 6 {
            0 => STEP_OPS[0](v),
            1 => STEP_OPS[1](v),
            2 => v.wrapping_add(step_fib(3, 0)),
            3 => v ^ 0x77,
            4 => v.wrapping_mul(9),
            _ => (black_box(STEP_OPS)[(v & 1) as usize])(v),
        };
    }
    v
}

#[test]
fn single_stepping_translated_code_only_shows_native_states_after_rollback() {
    let cases: [(extern "C" fn(u64, u64) -> u64, u64, u64); 2] =
        [(step_fib, 7, 0), (step_mix, 40, 5)];
    for (policy, red_zone) in policies_and_red_zones() {
        // Near and Far: three-register lookups; Low: two-register ones (the kernel's).
        for place in ["near", "far", "low"] {
            let mut total = common::Stepped::default();
            for (f, a, b) in cases {
                let entry = f as *const () as u64;
                let placement = match place {
                    "far" => Placement::Far(entry),
                    "low" => Placement::Low,
                    _ => Placement::Near(entry),
                };
                let mut rt = runtime(policy, placement, red_zone);
                let what = format!("{policy:?} red zone {red_zone} {place}");
                let (result, seen) =
                    common::assert_stepped_states_are_native(&mut rt, entry, &[a, b], || {}, &what);
                assert_eq!(result, f(a, b));
                assert!(seen.steps > 100, "{what}: {seen:?}");
                total.spills += seen.spills;
                total.from_stack += seen.from_stack;
            }
            // The traced runs went through lookup sequences (spills) and their miss paths.
            assert!(
                total.spills > 0 && total.from_stack > 0,
                "{policy:?} {red_zone} {place}: {total:?}"
            );
        }
    }
}

/// `main(n)` at +0x80 calls f0 (+0x100, `add rax, 1`) and f1 (+0x200, `add rax, 2`)
/// through rdx `n` times: two indirect-call targets with the same low 8 bits, one index of
/// the Small lookup table.
fn colliding_calls() -> Vec<u8> {
    let mut c = vec![0x90u8; 0x206];
    let main = [
        0x31, 0xc0, // xor eax, eax
        0x48, 0x8d, 0x15, 0x77, 0x00, 0x00, 0x00, // L: lea rdx, [rip + f0]
        0xff, 0xd2, // call rdx
        0x48, 0x8d, 0x15, 0x6e, 0x01, 0x00, 0x00, // lea rdx, [rip + f1]
        0xff, 0xd2, // call rdx
        0x48, 0xff, 0xcf, // dec rdi
        0x75, 0xe9, // jnz L
        0xc3, // ret
    ];
    c[0x80..0x80 + main.len()].copy_from_slice(&main);
    for (at, n) in [(0x100, 1), (0x200, 2)] {
        c[at..at + 5].copy_from_slice(&[0x48, 0x83, 0xc0, n, 0xc3]);
    }
    c
}

#[test]
fn indirect_targets_with_the_same_low_bits_both_hit_inline() {
    let guest = GuestCode::new(&colliding_calls());
    let entry = guest.addr() + 0x80;
    // Near: the three-register lookup; Low: the two-register one (the kernel's). Fast:
    // both hits jump to their target's lookup entry.
    let policies = [CallRetPolicy::Transparent, CallRetPolicy::Fast];
    for (policy, placement) in policies
        .into_iter()
        .flat_map(|p| [(p, Placement::Near(guest.addr())), (p, Placement::Low)])
    {
        let mut opts = Options::new(policy);
        opts.placement = placement;
        opts.ibl = IblSize::Small;
        opts.red_zone = 0;
        let mut rt = Runtime::new(opts).expect("runtime");
        assert_eq!(rt.run(entry, &[500]).expect("run"), 1500);
        // One slot each (the first and the next): no dispatcher entry per call.
        let lookups = rt.cache().stats().lookups;
        assert!(
            lookups < 20,
            "{policy:?} {placement:?}: {lookups} dispatcher lookups"
        );
        let what = format!("{policy:?} {placement:?}");
        let (result, seen) =
            common::assert_stepped_states_are_native(&mut rt, entry, &[20], || {}, &what);
        assert_eq!(result, 60);
        assert!(seen.spills > 100, "{what}: {seen:?}");
    }
}

#[test]
#[should_panic(expected = "hook handler panicked")]
fn panic_in_a_hook_handler_propagates_out_of_the_run() {
    let c = [0xcc, 0xc3];
    let guest = GuestCode::new(&c);
    let mut opts = Options::new(CallRetPolicy::Transparent);
    opts.hooks = HookClass::INT3;
    let mut rt = Runtime::new(opts).expect("runtime");
    rt.set_hook(Box::new(|_, _, _, _| panic!("hook handler panicked")));
    let _ = rt.run(guest.addr(), &[]);
}
