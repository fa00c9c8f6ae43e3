//! Transparent sites in a Fast cache: direct calls to the embedder's Transparent call
//! targets push the native return address and the `ret`s in its ranges are inline lookups,
//! as the kernel needs for ftrace trampolines (which take the traced function's address
//! from their return address); a Transparent `ret` that pops a Fast caller's code-cache
//! return address leaves for the dispatcher, which resumes at that site's guest return
//! address; any other cache address as a target is refused.

mod common;

use std::arch::global_asm;
use std::sync::LazyLock;

use iced_x86::{Code, Register};
use kdbt_engine::{
    CallRetPolicy, CodeCache, Config, Dispatch, Embedder, Error, GuestMemory, HookClass, IblSize,
    SliceMemory, Step, Thunks,
};
use kdbt_host::{HookAction, Options, Placement, RunError, Runtime, TransparentSites};

// Hand-written guest functions (no red zone used; every `call` is `e8 rel32`, 5 bytes).
global_asm!(
    ".balign 16",
    // ftrace_caller's idiom: returns its return address, that of the call at the traced
    // function's entry.
    ".globl kdbt_ts_trampoline",
    "kdbt_ts_trampoline:",
    "mov rax, [rsp]",
    "ret",
    ".globl kdbt_ts_trampoline_end",
    "kdbt_ts_trampoline_end:",
    // A traced function: its entry calls the trampoline (a patched fentry call).
    ".balign 16",
    ".globl kdbt_ts_traced",
    "kdbt_ts_traced:",
    "call kdbt_ts_trampoline",
    "ret",
    ".globl kdbt_ts_caller",
    "kdbt_ts_caller:",
    "call kdbt_ts_traced",
    "ret",
    // An ftrace filter: 1 if the traced function (return address - 5) is `filtered`.
    ".balign 16",
    ".globl kdbt_ts_filter",
    "kdbt_ts_filter:",
    "mov rax, [rsp]",
    "sub rax, 5",
    "lea rcx, [rip + kdbt_ts_filtered]",
    "cmp rax, rcx",
    "sete al",
    "movzx eax, al",
    "ret",
    ".globl kdbt_ts_filter_end",
    "kdbt_ts_filter_end:",
    ".globl kdbt_ts_filtered",
    "kdbt_ts_filtered:",
    "call kdbt_ts_filter",
    "ret",
    "kdbt_ts_unfiltered:",
    "call kdbt_ts_filter",
    "ret",
    // 2 * filtered's answer + unfiltered's: 2 natively.
    ".globl kdbt_ts_filter_caller",
    "kdbt_ts_filter_caller:",
    "push rbx",
    "call kdbt_ts_filtered",
    "lea rbx, [rax + rax]",
    "call kdbt_ts_unfiltered",
    "add rax, rbx",
    "pop rbx",
    "ret",
    // Returns past its traced function, into that function's caller (whose return address,
    // a Fast one when translated, its `ret` pops).
    ".balign 16",
    ".globl kdbt_ts_skip",
    "kdbt_ts_skip:",
    "mov rax, [rsp]",
    "lea rsp, [rsp + 8]",
    "ret",
    ".globl kdbt_ts_skip_end",
    "kdbt_ts_skip_end:",
    ".globl kdbt_ts_skipped",
    "kdbt_ts_skipped:",
    "call kdbt_ts_skip",
    "ud2",
    ".globl kdbt_ts_skip_caller",
    "kdbt_ts_skip_caller:",
    "call kdbt_ts_skipped",
    "ret",
    // Enters the trampoline with a `jmp` (a tail call): its return address is its caller's.
    ".balign 16",
    "kdbt_ts_tail:",
    "jmp kdbt_ts_trampoline",
    ".globl kdbt_ts_tail_caller",
    "kdbt_ts_tail_caller:",
    "call kdbt_ts_tail",
    "ret",
    // Jumps one byte past its return address: under Fast, into translated code.
    ".balign 16",
    "kdbt_ts_jump_inside:",
    "mov rax, [rsp]",
    "inc rax",
    "jmp rax",
    ".globl kdbt_ts_jump_inside_caller",
    "kdbt_ts_jump_inside_caller:",
    "call kdbt_ts_jump_inside",
    "ret",
    // The trampoline stopped at a hook.
    ".balign 16",
    ".globl kdbt_ts_hooked",
    "kdbt_ts_hooked:",
    "int3",
    "mov rax, [rsp]",
    "ret",
    ".globl kdbt_ts_hooked_end",
    "kdbt_ts_hooked_end:",
    ".globl kdbt_ts_hooked_traced",
    "kdbt_ts_hooked_traced:",
    "call kdbt_ts_hooked",
    "ret",
    ".globl kdbt_ts_hooked_caller",
    "kdbt_ts_hooked_caller:",
    "call kdbt_ts_hooked_traced",
    "ret",
    // The trampoline returning through a return thunk, as the kernel's `RET` does with
    // return thunks on.
    ".balign 16",
    ".globl kdbt_ts_thunked",
    "kdbt_ts_thunked:",
    "mov rax, [rsp]",
    "jmp kdbt_ts_ret_thunk",
    ".globl kdbt_ts_thunked_end",
    "kdbt_ts_thunked_end:",
    ".globl kdbt_ts_thunked_traced",
    "kdbt_ts_thunked_traced:",
    "call kdbt_ts_thunked",
    "ret",
    ".globl kdbt_ts_thunked_caller",
    "kdbt_ts_thunked_caller:",
    "call kdbt_ts_thunked_traced",
    "ret",
    ".globl kdbt_ts_ret_thunk",
    "kdbt_ts_ret_thunk:",
    "ret",
    "int3",
    // The trampoline popping an argument its traced function pushed.
    ".balign 16",
    ".globl kdbt_ts_pops",
    "kdbt_ts_pops:",
    "mov rax, [rsp]",
    "ret 8",
    ".globl kdbt_ts_pops_end",
    "kdbt_ts_pops_end:",
    "kdbt_ts_pops_traced:",
    "push 7",
    "call kdbt_ts_pops",
    ".globl kdbt_ts_pops_return",
    "kdbt_ts_pops_return:",
    "ret",
    ".globl kdbt_ts_pops_caller",
    "kdbt_ts_pops_caller:",
    "call kdbt_ts_pops_traced",
    "ret",
);

extern "C" {
    fn kdbt_ts_trampoline();
    fn kdbt_ts_trampoline_end();
    fn kdbt_ts_traced();
    fn kdbt_ts_caller();
    fn kdbt_ts_filter();
    fn kdbt_ts_filter_end();
    fn kdbt_ts_filter_caller();
    fn kdbt_ts_skip();
    fn kdbt_ts_skip_end();
    fn kdbt_ts_skipped();
    fn kdbt_ts_skip_caller();
    fn kdbt_ts_tail_caller();
    fn kdbt_ts_jump_inside_caller();
    fn kdbt_ts_hooked();
    fn kdbt_ts_hooked_end();
    fn kdbt_ts_hooked_traced();
    fn kdbt_ts_hooked_caller();
    fn kdbt_ts_thunked();
    fn kdbt_ts_thunked_end();
    fn kdbt_ts_thunked_traced();
    fn kdbt_ts_thunked_caller();
    fn kdbt_ts_ret_thunk();
    fn kdbt_ts_pops();
    fn kdbt_ts_pops_end();
    fn kdbt_ts_pops_return();
    fn kdbt_ts_pops_caller();
}

fn addr(f: unsafe extern "C" fn()) -> u64 {
    f as usize as u64
}

/// The sites of a trampoline `start..end`: calls to it and its `ret`s are Transparent.
fn trampoline(start: unsafe extern "C" fn(), end: unsafe extern "C" fn()) -> TransparentSites {
    let range = addr(start)..addr(end);
    TransparentSites {
        calls: vec![range.clone()],
        rets: vec![range],
    }
}

fn fast(placement: Placement, red_zone: u32) -> Runtime {
    let mut opts = Options::new(CallRetPolicy::Fast);
    opts.placement = placement;
    opts.red_zone = red_zone;
    Runtime::new(opts).expect("runtime")
}

/// A Fast runtime declaring `sites`, for every placement (Near: the three-register
/// lookups; Low: the kernel's two-register ones; Far: RIP-relative operands rewritten) and
/// red zone (128, 0), with its name.
fn fast_runtimes(sites: &TransparentSites) -> Vec<(Runtime, String)> {
    let near = addr(kdbt_ts_trampoline);
    let mut out = Vec::new();
    for placement in [Placement::Near(near), Placement::Low, Placement::Far(near)] {
        for red_zone in [128, 0] {
            let mut rt = fast(placement, red_zone);
            rt.set_transparent_sites(sites.clone());
            out.push((rt, format!("{placement:?} red zone {red_zone}")));
        }
    }
    out
}

/// Under every Fast runtime declaring `sites`, `entry` returns `expected` natively and
/// translated, cold then hitting the trampoline's inline lookup, whose `ret` pops native
/// return addresses only: no return-site resume.
fn assert_native_result(entry: unsafe extern "C" fn(), sites: &TransparentSites, expected: u64) {
    for (mut rt, what) in fast_runtimes(sites) {
        assert_eq!(rt.run_native(addr(entry), &[]).expect("native"), expected);
        for run in 0..2 {
            let result = rt.run(addr(entry), &[]).expect("run");
            assert_eq!(result, expected, "{what} {run}");
        }
        assert_eq!(rt.cache().stats().site_resumes, 0, "{what}");
    }
}

#[test]
fn a_transparent_call_target_reads_its_native_return_address_under_fast() {
    let sites = trampoline(kdbt_ts_trampoline, kdbt_ts_trampoline_end);
    assert_native_result(kdbt_ts_caller, &sites, addr(kdbt_ts_traced) + 5);
}

#[test]
fn without_transparent_sites_a_fast_trampoline_reads_a_cache_return_address() {
    let mut rt = fast(Placement::Low, 0);
    let read = rt.run(addr(kdbt_ts_caller), &[]).expect("run");
    let native_ret = addr(kdbt_ts_traced) + 5;
    assert_ne!(read, native_ret);
    assert!(rt.arena_range().contains(&read), "{read:#x}");
    assert_eq!(rt.cache().return_site(read), Some(native_ret));
}

#[test]
fn an_ftrace_style_filter_decides_from_native_addresses_only_with_transparent_sites() {
    let sites = trampoline(kdbt_ts_filter, kdbt_ts_filter_end);
    assert_native_result(kdbt_ts_filter_caller, &sites, 2);
    let entry = addr(kdbt_ts_filter_caller);
    let mut rt = fast(Placement::Low, 0);
    assert_eq!(
        rt.run(entry, &[]).expect("run"),
        0,
        "cache addresses match no filter"
    );
}

#[test]
fn a_transparent_ret_popping_a_fast_return_site_resumes_at_its_guest_return_address() {
    let entry = addr(kdbt_ts_skip_caller);
    let sites = trampoline(kdbt_ts_skip, kdbt_ts_skip_end);
    let native_ret = addr(kdbt_ts_skipped) + 5;
    for (mut rt, what) in fast_runtimes(&sites) {
        assert_eq!(rt.run_native(entry, &[]).expect("native"), native_ret);
        for run in 1..=2 {
            assert_eq!(rt.run(entry, &[]).expect("run"), native_ret, "{what}");
            // Each run, the skip's `ret` popped the caller's return site (no inline lookup
            // can hit a cache address) and the dispatcher resumed there.
            let s = *rt.cache().stats();
            assert_eq!(s.site_resumes, run, "{what}: {s:?}");
        }
        assert_eq!(rt.cache().stats().native_fallbacks, 0, "{what}");
    }
}

#[test]
fn a_tail_call_into_a_trampoline_reads_and_returns_to_the_callers_return_site() {
    let entry = addr(kdbt_ts_tail_caller);
    let native_ret = entry + 5;
    let sites = trampoline(kdbt_ts_trampoline, kdbt_ts_trampoline_end);
    for (mut rt, what) in fast_runtimes(&sites) {
        assert_eq!(rt.run_native(entry, &[]).expect("native"), native_ret);
        // A `jmp` pushes nothing: the trampoline reads its caller's Fast return address
        // (the documented limit) and its `ret` pops it, through the dispatcher.
        let read = rt.run(entry, &[]).expect("run");
        assert_eq!(rt.cache().return_site(read), Some(native_ret), "{what}");
        assert_eq!(rt.cache().stats().site_resumes, 1, "{what}");
    }
}

#[test]
fn a_jump_to_a_cache_address_that_is_no_return_site_is_refused() {
    let mut rt = fast(Placement::Low, 0);
    let err = rt.run(addr(kdbt_ts_jump_inside_caller), &[]).unwrap_err();
    let RunError::Engine(Error::CacheTarget { target }) = err else {
        panic!("{err:?}");
    };
    // One byte into the caller's return site: inside its `jmp`.
    let native_ret = addr(kdbt_ts_jump_inside_caller) + 5;
    assert_eq!(rt.cache().return_site(target - 1), Some(native_ret));
    assert_eq!(rt.cache().stats().native_fallbacks, 0);
}

#[test]
fn leaving_the_cache_rewrites_fast_return_sites_and_keeps_transparent_native_ones() {
    let native_ret = addr(kdbt_ts_hooked_traced) + 5;
    for transparent in [true, false] {
        let mut opts = Options::new(CallRetPolicy::Fast);
        opts.hooks = HookClass::INT3;
        opts.placement = Placement::Low;
        let mut rt = Runtime::new(opts).expect("runtime");
        if transparent {
            rt.set_transparent_sites(trampoline(kdbt_ts_hooked, kdbt_ts_hooked_end));
        }
        let arena = rt.arena_range();
        rt.set_hook(Box::new(move |_, _, next, state| {
            // SAFETY: the guest rsp points to the hooked function's return address.
            let top = unsafe { *(state.get(kdbt_engine::Gpr::Rsp) as *const u64) };
            assert_eq!(top == native_ret, transparent, "{top:#x}");
            assert_eq!(arena.contains(&top), !transparent, "{top:#x}");
            HookAction::Leave(next)
        }));
        let read = rt.run(addr(kdbt_ts_hooked_caller), &[]).expect("run");
        assert_eq!(read, native_ret, "transparent {transparent}");
        let rw = rt.last_rewrite().expect("left the cache");
        // The caller's return site, plus the trampoline's own when its call was Fast.
        let sites = if transparent { 1 } else { 2 };
        assert_eq!(rw.return_sites, sites, "transparent {transparent}: {rw:?}");
        assert_eq!((rw.inside_code, rw.data), (0, 0), "{rw:?}");
    }
}

#[test]
fn single_stepping_transparent_sites_in_a_fast_cache_only_shows_native_states() {
    let cases = [
        (
            kdbt_ts_filter_caller as unsafe extern "C" fn(),
            trampoline(kdbt_ts_filter, kdbt_ts_filter_end),
        ),
        (
            kdbt_ts_skip_caller,
            trampoline(kdbt_ts_skip, kdbt_ts_skip_end),
        ),
        (
            kdbt_ts_pops_caller,
            trampoline(kdbt_ts_pops, kdbt_ts_pops_end),
        ),
    ];
    for (entry, sites) in cases {
        for (mut rt, what) in fast_runtimes(&sites) {
            let (_, seen) =
                common::assert_stepped_states_are_native(&mut rt, addr(entry), &[], || {}, &what);
            // Through the lookups' spills and miss paths (for the skip, one leaving for a
            // return site).
            assert!(seen.spills > 0 && seen.from_stack > 0, "{what}: {seen:?}");
        }
    }
}

#[test]
fn a_transparent_ret_imm16_in_a_fast_cache_pops_its_argument_too() {
    // Its hits enter the target past its lookup entry, with rsp 16 bytes up.
    let sites = trampoline(kdbt_ts_pops, kdbt_ts_pops_end);
    assert_native_result(kdbt_ts_pops_caller, &sites, addr(kdbt_ts_pops_return));
}

#[test]
fn a_return_thunk_in_a_transparent_range_is_a_transparent_ret() {
    let entry = addr(kdbt_ts_thunked_caller);
    let native_ret = addr(kdbt_ts_thunked_traced) + 5;
    let mut opts = Options::new(CallRetPolicy::Fast);
    opts.thunks.returns[0] = addr(kdbt_ts_ret_thunk);
    let mut rt = Runtime::new(opts).expect("runtime");
    rt.set_transparent_sites(trampoline(kdbt_ts_thunked, kdbt_ts_thunked_end));
    assert_eq!(rt.run(entry, &[]).expect("run"), native_ret);
    assert_eq!(rt.run(entry, &[]).expect("rerun"), native_ret);
    // The `jmp` was the `ret` it stands for: the thunk, whose copied `ret` would have
    // returned to the native address and left the cache, was never translated.
    assert_eq!(rt.cache().lookup(addr(kdbt_ts_ret_thunk)), None);
}

#[test]
fn a_transparent_call_pushes_its_literal_and_a_transparent_ret_jumps_on_its_hits() {
    let sites = trampoline(kdbt_ts_trampoline, kdbt_ts_trampoline_end);
    for (mut rt, what) in fast_runtimes(&sites) {
        rt.run(addr(kdbt_ts_caller), &[]).expect("run");
        let cache = rt.cache();
        let code = |pc: u64| common::fragment_code(cache, cache.lookup(pc).expect("translated"));
        // The caller's call stays a real `call`; the traced function's is
        // `push [rip + literal]` (the native return address) and no `call`.
        let caller = code(addr(kdbt_ts_caller));
        assert!(
            caller.iter().any(|i| i.code() == Code::Call_rel32_64),
            "{what}"
        );
        let traced = code(addr(kdbt_ts_traced));
        assert!(
            traced.iter().all(|i| i.code() != Code::Call_rel32_64),
            "{what}"
        );
        let push = traced
            .iter()
            .find(|i| i.code() == Code::Push_rm64)
            .expect("push of the return address");
        let literal = (push.memory_displacement64() - cache.exec_base()) as usize;
        let arena = cache.arena().as_ref();
        let pushed = u64::from_le_bytes(arena[literal..literal + 8].try_into().unwrap());
        assert_eq!(pushed, addr(kdbt_ts_traced) + 5, "{what}");
        // The trampoline's `ret` is a lookup (not copied) whose two hits `jmp rcx`.
        let tramp = code(addr(kdbt_ts_trampoline));
        assert!(tramp.iter().all(|i| i.code() != Code::Retnq), "{what}");
        let jumps = tramp
            .iter()
            .filter(|i| i.code() == Code::Jmp_rm64 && i.op0_register() == Register::RCX)
            .count();
        assert_eq!(jumps, 2, "{what}");
    }
}

const BASE: u64 = 0x40_0000;
const EXEC: u64 = 0x1_0000_0000;

/// `call B; ret` at BASE (B at BASE + 0x100: `jmp rax`).
static CODE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut code = vec![0xcc; 0x200];
    code[..6].copy_from_slice(&[0xe8, 0xfb, 0x00, 0x00, 0x00, 0xc3]);
    code[0x100..0x102].copy_from_slice(&[0xff, 0xe0]);
    code
});

struct Env;

impl Embedder<Vec<u8>> for Env {
    fn memory(&self) -> &dyn GuestMemory {
        static MEM: LazyLock<SliceMemory<'static>> =
            LazyLock::new(|| SliceMemory::new(BASE, &CODE));
        &*MEM
    }
}

fn fast_cache() -> CodeCache<Vec<u8>> {
    let cfg = Config {
        policy: CallRetPolicy::Fast,
        red_zone: 0,
        dispatcher: EXEC + 0x10_0000,
        hooks: HookClass::empty(),
        ibl: IblSize::Small,
        thunks: Thunks::NONE,
        through_jcc: true,
    };
    CodeCache::new(vec![0u8; 1 << 16], EXEC, cfg).expect("cache")
}

/// A Fast cache holding `call B; ret` and B, the return site of the call, and the id of
/// B's indirect exit.
fn with_return_site() -> (CodeCache<Vec<u8>>, u64, u64) {
    let mut cache = fast_cache();
    cache
        .dispatch(Step::Enter { pc: BASE }, &mut Env)
        .expect("A");
    cache
        .dispatch(Step::Enter { pc: BASE + 0x100 }, &mut Env)
        .expect("B");
    let a = cache
        .lookup_entry(cache.lookup(BASE).expect("A"))
        .expect("A");
    let site = (a..a + 256)
        .find(|&x| cache.return_site(x).is_some())
        .expect("the call's return site");
    assert_eq!(cache.return_site(site), Some(BASE + 5));
    // A: the call's target and return site; B: its lookup's miss.
    let b_miss = 2;
    (cache, site, b_miss)
}

#[test]
fn dispatch_resumes_a_return_site_target_at_its_guest_return_address() {
    let (mut cache, site, b_miss) = with_return_site();
    let exit = Step::Exit {
        exit_id: b_miss,
        aux: site,
    };
    let Ok(Dispatch::Run { cache_pc }) = cache.dispatch(exit, &mut Env) else {
        panic!("a return site is a resume target");
    };
    assert_eq!(Some(cache_pc), cache.cache_pc_for(BASE + 5));
    let enter = cache.dispatch(Step::Enter { pc: site }, &mut Env);
    assert_eq!(enter, Ok(Dispatch::Run { cache_pc }));
    assert_eq!(cache.stats().site_resumes, 2);
    // Its guest return address invalidated: resumed at a new translation of it.
    let old = cache.lookup(BASE + 5).expect("translated");
    cache.invalidate(old).expect("invalidate");
    let Ok(Dispatch::Run { cache_pc: new }) = cache.dispatch(exit, &mut Env) else {
        panic!("a return site is a resume target");
    };
    assert_ne!(new, cache_pc);
    assert_eq!(Some(new), cache.cache_pc_for(BASE + 5));
}

#[test]
fn dispatch_refuses_cache_addresses_that_are_no_return_site() {
    let (mut cache, site, b_miss) = with_return_site();
    let b = cache.lookup(BASE + 0x100).expect("B");
    let lookup_table = EXEC + kdbt_engine::TABLE_OFFSET as u64;
    let not_sites = [
        site + 1,
        cache.fragment_entry(b).expect("entry"),
        cache.lookup_entry(b).expect("lookup entry"),
        lookup_table,
    ];
    let blocks = cache.stats().blocks;
    for target in not_sites {
        let exit = Step::Exit {
            exit_id: b_miss,
            aux: target,
        };
        assert_eq!(
            cache.dispatch(exit, &mut Env),
            Err(Error::CacheTarget { target })
        );
        assert_eq!(
            cache.dispatch(Step::Enter { pc: target }, &mut Env),
            Err(Error::CacheTarget { target })
        );
    }
    // Nothing was translated at a cache address.
    assert_eq!(cache.stats().blocks, blocks);
    // After a flush the site is stale: refused, not run.
    cache.flush();
    assert_eq!(
        cache.dispatch(Step::Enter { pc: site }, &mut Env),
        Err(Error::CacheTarget { target: site })
    );
    assert_eq!(cache.stats().site_resumes, 0);
}
