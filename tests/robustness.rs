//! Robustness: random, truncated and undecodable byte streams never panic the translator
//! and come back as typed errors; a cache too small for a block is reported and recovered
//! from; linking, unlinking and invalidation keep translated code correct.

use kdbt_engine::{
    CallRetPolicy, CodeCache, Config, Error, FragmentId, Frame, GuestMemory, HookClass, IblSize,
    RipSource, SliceMemory, Thunks,
};
use kdbt_host::{Options, RunError, Runtime};

mod common;

use common::Rng;

/// Arena offset of the first fragment with the Small lookup table.
const SMALL_TABLE_END: usize = kdbt_engine::TABLE_OFFSET + IblSize::Small.table_bytes();

const BASE: u64 = 0x40_0000;

fn config(rng: &mut Rng) -> Config {
    Config {
        policy: if rng.below(2) == 0 {
            CallRetPolicy::Transparent
        } else {
            CallRetPolicy::Fast
        },
        red_zone: if rng.below(2) == 0 { 0 } else { 128 },
        // Sometimes far from the arena (dispatcher through the slot), sometimes near.
        dispatcher: if rng.below(2) == 0 {
            0x7fff_0000_0000
        } else {
            0x1_0000_2000
        },
        hooks: HookClass::from_bits_truncate(rng.next() as u32),
        ibl: IblSize::Small,
        thunks: Thunks::NONE,
        through_jcc: true,
    }
}

fn small_cache(cfg: Config, code_bytes: usize) -> CodeCache<Vec<u8>> {
    let len = SMALL_TABLE_END + code_bytes;
    CodeCache::new(vec![0u8; len], 0x1_0000_0000, cfg).expect("cache")
}

/// Translates at `pc`, flushing once on `CacheFull`; checks every code byte of a new
/// fragment maps back and its rollback applies without panicking.
fn translate_and_check(
    cache: &mut CodeCache<Vec<u8>>,
    mem: &dyn GuestMemory,
    pc: u64,
) -> Result<(), Error> {
    let id = match cache.translate(pc, mem) {
        Err(Error::CacheFull { .. }) => {
            cache.flush();
            cache.translate(pc, mem)?
        }
        r => r?,
    };
    let entry = cache.fragment_entry(id)?;
    let mapping = cache.pc_map(entry).expect("fragment entry maps");
    assert_eq!(mapping.insn_pc, pc);
    assert_eq!(cache.cache_pc_for(pc), Some(entry));
    let mut addr = entry;
    while let Some(m) = cache.pc_map(addr) {
        let mut frame = Frame::default();
        m.rollback
            .apply(&mut frame, |a| Some(a ^ 0x5555))
            .expect("reader always answers");
        if let RipSource::Guest(g) = m.rollback.rip {
            assert_eq!(frame.rip, g);
        }
        addr += 1;
    }
    assert!(addr > entry);
    Ok(())
}

fn check_error(e: Error) {
    assert!(
        matches!(
            e,
            Error::Undecodable { .. }
                | Error::GuestMemory { .. }
                | Error::Unsupported { .. }
                | Error::Encode { .. }
                | Error::FragmentTooLarge { .. }
        ),
        "{e:?}"
    );
}

#[test]
fn random_byte_streams_never_panic_and_fail_with_typed_errors() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..300 {
        let mut cache = small_cache(config(&mut rng), 16 << 10);
        for _ in 0..40 {
            let len = rng.below(80) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mem = SliceMemory::new(BASE, &bytes);
            let pc = BASE + rng.below(len as u64 + 2);
            match translate_and_check(&mut cache, &mem, pc) {
                Ok(()) => ok += 1,
                Err(e) => {
                    check_error(e);
                    err += 1;
                }
            }
        }
    }
    assert!(ok > 1000 && err > 100, "ok {ok} err {err}");
}

#[test]
fn truncated_windows_of_a_real_executable_never_panic() {
    let exe = std::fs::read("/bin/busybox")
        .or_else(|_| std::fs::read(std::env::current_exe().expect("exe")))
        .expect("an executable to read");
    let mut rng = Rng(42);
    let mut cfg = config(&mut rng);
    cfg.hooks = HookClass::all();
    let mut cache = small_cache(cfg, 64 << 10);
    let mut translated = 0;
    for _ in 0..4000 {
        let start = rng.below(exe.len() as u64 - 64) as usize;
        let len = rng.below(64) as usize + 1;
        let window = &exe[start..start + len];
        let mem = SliceMemory::new(BASE, window);
        match translate_and_check(&mut cache, &mem, BASE) {
            Ok(()) => translated += 1,
            Err(e) => check_error(e),
        }
    }
    assert!(translated > 1000, "{translated}");
    assert!(cache.stats().blocks > 0);
}

fn cfg(policy: CallRetPolicy) -> Config {
    Config {
        policy,
        red_zone: 128,
        dispatcher: 0x1_0000_2000,
        hooks: HookClass::empty(),
        ibl: IblSize::Small,
        thunks: Thunks::NONE,
        through_jcc: true,
    }
}

#[test]
fn undecodable_or_unreadable_first_instruction_is_an_error() {
    let mut cache = small_cache(cfg(CallRetPolicy::Transparent), 4096);
    let cases: [(&[u8], Error); 4] = [
        (&[0x06], Error::Undecodable { pc: BASE }), // push es: invalid in 64-bit mode
        (&[0x48], Error::GuestMemory { pc: BASE }), // truncated: REX prefix only
        (&[0x48, 0x8b], Error::GuestMemory { pc: BASE }), // truncated ModRM
        (&[], Error::GuestMemory { pc: BASE }),
    ];
    for (bytes, expected) in cases {
        let mem = SliceMemory::new(BASE, bytes);
        assert_eq!(cache.translate(BASE, &mem), Err(expected), "{bytes:x?}");
    }
    let mem = SliceMemory::new(BASE, &[0x90]);
    assert_eq!(
        cache.translate(0x1000, &mem),
        Err(Error::GuestMemory { pc: 0x1000 })
    );
    assert_eq!(cache.stats().blocks, 0);
}

#[test]
fn undecodable_instruction_later_in_a_block_ends_the_block_before_it() {
    let mut cache = small_cache(cfg(CallRetPolicy::Transparent), 4096);
    let bytes = [0x90, 0x48, 0x01, 0xc8, 0x06];
    let mem = SliceMemory::new(BASE, &bytes);
    cache
        .translate(BASE, &mem)
        .expect("first two instructions translate");
    assert_eq!(cache.stats().guest_insns, 2);
    assert_eq!(cache.stats().guest_bytes, 4);
    assert_eq!(
        cache.translate(BASE + 4, &mem),
        Err(Error::Undecodable { pc: BASE + 4 })
    );
}

#[test]
fn block_larger_than_the_whole_cache_is_fragment_too_large_even_after_flush() {
    let mut cache = small_cache(cfg(CallRetPolicy::Transparent), 64);
    let ret = [0xc3]; // a lookup sequence: far more than 64 bytes
    let mem = SliceMemory::new(BASE, &ret);
    let e = cache.translate(BASE, &mem).expect_err("does not fit");
    assert!(
        matches!(e, Error::FragmentTooLarge { capacity: 64, .. }),
        "{e:?}"
    );
    cache.flush();
    assert!(matches!(
        cache.translate(BASE, &mem),
        Err(Error::FragmentTooLarge { .. })
    ));
    assert_eq!(cache.stats().blocks, 0);
}

#[test]
fn full_cache_reports_cache_full_and_translates_after_a_flush() {
    let mut cache = small_cache(cfg(CallRetPolicy::Transparent), 1024);
    // 64 one-instruction blocks: `jmp` to the next one.
    let code: Vec<u8> = (0..64).flat_map(|_| [0xeb, 0x00]).collect();
    let mem = SliceMemory::new(BASE, &code);
    let mut pc = BASE;
    let full_at = loop {
        match cache.translate(pc, &mem) {
            Ok(_) => pc += 2,
            Err(Error::CacheFull { needed, available }) => {
                assert!(needed > available);
                break pc;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(full_at > BASE + 4, "several blocks fit first");
    let before = *cache.stats();
    assert!(cache.lookup(BASE).is_some());
    cache.flush();
    assert!(cache.lookup(BASE).is_none(), "flush forgets every fragment");
    assert_eq!(cache.used(), 0);
    let id = cache
        .translate(full_at, &mem)
        .expect("fits after the flush");
    assert_eq!(id, FragmentId(0));
    assert_eq!(cache.stats().flushes, before.flushes + 1);
    assert_eq!(cache.stats().blocks, before.blocks + 1);
}

#[inline(never)]
extern "C" fn fib(n: u64, _: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1, 0) + fib(n - 2, 0)
    }
}

/// A runtime whose code area is 8 bytes short of what running `fib(16)` needs under
/// `policy`: every fragment fits, all of them do not.
fn tiny_runtime(policy: CallRetPolicy) -> Runtime {
    let mut opts = Options::new(policy);
    opts.ibl = IblSize::Small;
    let mut roomy = Runtime::new(opts).expect("runtime");
    roomy.run(fib as *const () as u64, &[16, 0]).expect("run");
    assert!(roomy.cache().stats().blocks >= 3);
    opts.arena_len = SMALL_TABLE_END + roomy.cache().used() as usize - 8;
    Runtime::new(opts).expect("runtime")
}

#[test]
fn transparent_run_in_a_tiny_cache_flushes_and_still_matches_native() {
    let mut rt = tiny_runtime(CallRetPolicy::Transparent);
    let entry = fib as *const () as u64;
    let native = rt.run_native(entry, &[16, 0]).expect("native");
    assert_eq!(rt.run(entry, &[16, 0]).expect("translated"), native);
    assert!(rt.cache().stats().flushes > 0, "{:?}", rt.cache().stats());
}

#[test]
fn fast_run_in_a_tiny_cache_reports_cache_full_instead_of_flushing_live_return_addresses() {
    let mut rt = tiny_runtime(CallRetPolicy::Fast);
    match rt.run(fib as *const () as u64, &[16, 0]) {
        Err(RunError::Untranslatable {
            error: Error::CacheFull { .. },
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(rt.cache().stats().flushes, 0);
}

#[test]
fn invalidating_every_fragment_unlinks_and_reruns_give_the_same_result() {
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let mut rt = Runtime::new(Options::new(policy)).expect("runtime");
        let entry = fib as *const () as u64;
        let native = rt.run_native(entry, &[15, 0]).expect("native");
        assert_eq!(rt.run(entry, &[15, 0]).expect("first"), native);
        let blocks = rt.cache().stats().blocks;
        let links = rt.cache().stats().links;
        assert!(links > 0);
        let mut incoming = 0;
        for i in 0..blocks as u32 {
            incoming += rt.cache().incoming(FragmentId(i)).count() as u64;
        }
        assert_eq!(
            incoming, links,
            "every link is on its target's incoming list"
        );
        for i in 0..blocks as u32 {
            rt.cache_mut()
                .invalidate(FragmentId(i))
                .expect("invalidate");
            assert_eq!(rt.cache().incoming(FragmentId(i)).count(), 0);
        }
        assert_eq!(rt.cache().stats().unlinks, links, "{policy:?}");
        assert!(rt.cache().lookup(entry).is_none());
        assert_eq!(rt.run(entry, &[15, 0]).expect("after invalidation"), native);
        assert_eq!(
            rt.cache().stats().blocks,
            2 * blocks,
            "everything translated again"
        );
    }
}

#[test]
fn reverse_map_agrees_with_pc_map_inside_fragments() {
    let mut rt = Runtime::new(Options::new(CallRetPolicy::Transparent)).expect("runtime");
    let entry = fib as *const () as u64;
    rt.run(entry, &[10, 0]).expect("run");
    let cache = rt.cache();
    let range = rt.arena_range();
    let (mut mapped, mut resumable) = (0, 0);
    for addr in range.clone() {
        let Some(m) = cache.pc_map(addr) else {
            continue;
        };
        assert!(cache.contains(addr));
        mapped += 1;
        let rb = m.rollback;
        if rb.restore == [None; 3] && rb.rsp_adjust == 0 && rb.rip == RipSource::Guest(m.insn_pc) {
            let back = cache
                .cache_pc_for(m.insn_pc)
                .expect("a resumable address for a mapped guest PC");
            let again = cache.pc_map(back).expect("maps");
            assert_eq!(again.rollback.rip, RipSource::Guest(m.insn_pc));
            resumable += 1;
        }
    }
    assert!(mapped > 100 && resumable > 10, "{mapped} {resumable}");
    assert!(
        cache.pc_map(range.start).is_none(),
        "the dispatcher slot is not code"
    );
    assert!(
        cache.pc_map(range.start + 64).is_none(),
        "the lookup table is not code"
    );
}

#[test]
fn fast_policy_return_sites_map_back_to_guest_return_addresses() {
    // f: mov eax, 5; ret     main: call f; add eax, 1; ret
    let code = [
        0xb8, 5, 0, 0, 0, 0xc3, 0xe8, 0xf5, 0xff, 0xff, 0xff, 0x83, 0xc0, 0x01, 0xc3,
    ];
    let mut cache = small_cache(cfg(CallRetPolicy::Fast), 4096);
    let mem = SliceMemory::new(BASE, &code);
    let main = cache.translate(BASE + 6, &mem).expect("main");
    let start = cache.fragment_entry(main).expect("entry");
    let sites: Vec<u64> = (start..start + 64)
        .filter_map(|a| cache.return_site(a))
        .collect();
    assert_eq!(sites, vec![BASE + 11], "one return site: after the call");
    let mut transparent = small_cache(cfg(CallRetPolicy::Transparent), 4096);
    let t = transparent.translate(BASE + 6, &mem).expect("main");
    let start = transparent.fragment_entry(t).expect("entry");
    assert!((start..start + 64).all(|a| transparent.return_site(a).is_none()));
}

#[test]
fn untranslatable_instructions_are_typed_unsupported_errors() {
    use kdbt_engine::Unsupported;
    let mut cache = small_cache(cfg(CallRetPolicy::Transparent), 4096);
    let cases: [(&[u8], Unsupported); 4] = [
        (&[0xc7, 0xf8, 0, 0, 0, 0], Unsupported::Xbegin),
        (&[0x67, 0x8b, 0x05, 0, 0, 0, 0], Unsupported::EipRelative),
        // push qword [rip + 0]: the cache (at 4 GiB) cannot reach BASE, and the
        // instruction uses rsp, so no scratch register can be spilled for it.
        (
            &[0xff, 0x35, 0, 0, 0, 0],
            Unsupported::FarRipRelativeWithRsp,
        ),
        // ret 0xffff: more than the lookup's `ret imm16` can skip with a 128-byte red zone.
        (&[0xc2, 0xff, 0xff], Unsupported::RetImmediate),
    ];
    for (bytes, what) in cases {
        let mem = SliceMemory::new(BASE, bytes);
        assert_eq!(
            cache.translate(BASE, &mem),
            Err(Error::Unsupported { pc: BASE, what }),
            "{bytes:x?}"
        );
    }
    assert_eq!(cache.stats().blocks, 0);
    // The same far operand without rsp goes through a scratch register.
    let mov = [0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3];
    cache
        .translate(BASE, &SliceMemory::new(BASE, &mov))
        .expect("mov rax, [rip] translates");
}

#[test]
fn rollback_with_an_unreadable_stack_fails_and_leaves_the_frame_unchanged() {
    let mut cache = small_cache(cfg(CallRetPolicy::Transparent), 4096);
    let ret = [0xc3];
    let id = cache
        .translate(BASE, &SliceMemory::new(BASE, &ret))
        .expect("ret");
    let entry = cache.fragment_entry(id).expect("entry");
    let mut failed = 0;
    for addr in entry..entry + 256 {
        let Some(m) = cache.pc_map(addr) else {
            continue;
        };
        let frame = Frame {
            gpr: [0x1000; 16],
            rip: addr,
            rflags: 0x246,
        };
        let mut f = frame;
        let reads_stack = m.rollback.restore.iter().any(Option::is_some)
            || matches!(m.rollback.rip, RipSource::Stack(_));
        match m.rollback.apply(&mut f, |_| None) {
            Ok(()) => assert!(!reads_stack, "{m:?}"),
            Err(e) => {
                assert!(reads_stack);
                assert!(e.addr >= 0x1000 && e.addr < 0x1000 + 4096, "{e:?}");
                assert_eq!(f, frame, "a failed rollback changes nothing");
                failed += 1;
            }
        }
    }
    assert!(
        failed > 10,
        "the lookup sequence reads its spill slots: {failed}"
    );
}
