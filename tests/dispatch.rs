//! The engine's dispatcher step (`CodeCache::dispatch`): lookup, translation, linking,
//! flush-and-retry and native fallback, as the kernel and the user-space runtimes use it.

use kdbt_engine::{
    CallRetPolicy, CodeCache, Config, Dispatch, Embedder, Error, ExitReason, GuestMemory,
    HookClass, IblSize, SliceMemory, Step, Thunks,
};

/// Arena offset of the first fragment with the Small lookup table.
const SMALL_TABLE_END: usize = kdbt_engine::TABLE_OFFSET + IblSize::Small.table_bytes();

const BASE: u64 = 0x40_0000;

/// A: `jmp B` (at BASE + 0x100); B: `int3; ret`. Undecodable bytes at BASE + 0x200.
fn code() -> Vec<u8> {
    let mut code = vec![0x90u8; 0x300];
    code[..5].copy_from_slice(&[0xe9, 0xfb, 0x00, 0x00, 0x00]);
    code[0x100..0x102].copy_from_slice(&[0xcc, 0xc3]);
    code[0x200] = 0x06; // `push es`: invalid in 64-bit mode
    code
}

struct Env<'m> {
    mem: SliceMemory<'m>,
    native: u64,
    pressure: bool,
    flushed: u32,
}

impl Embedder<Vec<u8>> for Env<'_> {
    fn memory(&self) -> &dyn GuestMemory {
        &self.mem
    }

    fn runs_natively(&self, pc: u64) -> bool {
        pc == self.native
    }

    fn under_pressure(&self, _cache: &CodeCache<Vec<u8>>) -> bool {
        self.pressure
    }

    fn flushed(&mut self, _cache: &mut CodeCache<Vec<u8>>) {
        self.flushed += 1;
    }
}

fn cache(code_bytes: usize) -> CodeCache<Vec<u8>> {
    let cfg = Config {
        policy: CallRetPolicy::Transparent,
        red_zone: 0,
        dispatcher: 0x1_0000_2000,
        hooks: HookClass::INT3,
        ibl: IblSize::Small,
        thunks: Thunks::NONE,
        through_jcc: true,
    };
    CodeCache::new(vec![0u8; SMALL_TABLE_END + code_bytes], 0x1_0000_0000, cfg).unwrap()
}

fn env(code: &[u8]) -> Env<'_> {
    Env {
        mem: SliceMemory::new(BASE, code),
        native: 0,
        pressure: false,
        flushed: 0,
    }
}

#[test]
fn a_direct_miss_translates_and_links_its_target() {
    let code = code();
    let (mut cache, mut env) = (cache(1 << 16), env(&code));
    let a = cache.dispatch(Step::Enter { pc: BASE }, &mut env).unwrap();
    assert_eq!(
        a,
        Dispatch::Run {
            cache_pc: cache.cache_pc_for(BASE).unwrap()
        }
    );
    let Ok(ExitReason::DirectMiss { exit, target }) = cache.exit_reason(0, 0) else {
        panic!("exit 0 is A's jmp");
    };
    let b = cache
        .dispatch(Step::Exit { exit_id: 0, aux: 0 }, &mut env)
        .unwrap();
    assert_eq!(target, BASE + 0x100);
    assert_eq!(
        b,
        Dispatch::Run {
            cache_pc: cache.cache_pc_for(target).unwrap()
        }
    );
    assert_eq!(cache.linked_to(exit), cache.lookup(target));
    // B's int3 is hooked: the caller emulates it.
    let Dispatch::Hook(site) = cache
        .dispatch(Step::Exit { exit_id: 1, aux: 0 }, &mut env)
        .unwrap()
    else {
        panic!("int3 hook");
    };
    assert_eq!((site.class, site.pc), (HookClass::INT3, target));
    assert_eq!(
        cache.dispatch(
            Step::Exit {
                exit_id: 99,
                aux: 0
            },
            &mut env
        ),
        Err(Error::UnknownExit { id: 99 })
    );
    assert_eq!((cache.stats().flushes, env.flushed), (0, 0));
}

#[test]
fn a_full_cache_is_flushed_once_and_the_stale_exit_is_not_linked() {
    let code = code();
    let mut env = env(&code);
    // Room for A only.
    let mut room = 64;
    let mut cache = loop {
        let mut c = cache(room);
        if c.translate(BASE, &env.mem).is_ok() {
            break c;
        }
        room += 8;
    };
    let Ok(ExitReason::DirectMiss { .. }) = cache.exit_reason(0, 0) else {
        panic!("exit 0 is A's jmp");
    };
    let r = cache
        .dispatch(Step::Exit { exit_id: 0, aux: 0 }, &mut env)
        .unwrap();
    let b = cache.lookup(BASE + 0x100).expect("B after the flush");
    assert_eq!(
        r,
        Dispatch::Run {
            cache_pc: cache.fragment_entry(b).unwrap()
        }
    );
    assert_eq!((cache.stats().flushes, env.flushed), (1, 1));
    assert_eq!(cache.lookup(BASE), None, "A went with the flush");
    assert_eq!(
        cache.stats().links,
        0,
        "the exit of before the flush is stale"
    );
}

#[test]
fn untranslatable_and_native_targets_run_natively_and_only_failures_count() {
    let code = code();
    let (mut cache, mut env) = (cache(1 << 16), env(&code));
    env.native = BASE + 0x100;
    assert_eq!(
        cache.dispatch(Step::Enter { pc: BASE + 0x100 }, &mut env),
        Ok(Dispatch::Native {
            pc: BASE + 0x100,
            error: None
        })
    );
    assert_eq!(cache.stats().native_fallbacks, 0);
    let r = cache.dispatch(Step::Enter { pc: BASE + 0x200 }, &mut env);
    assert_eq!(
        r,
        Ok(Dispatch::Native {
            pc: BASE + 0x200,
            error: Some(Error::Undecodable { pc: BASE + 0x200 })
        })
    );
    assert_eq!(cache.stats().native_fallbacks, 1);
    assert_eq!(env.flushed, 0, "a guest-code error does not flush");
}

#[test]
fn pressure_flushes_only_after_a_translation() {
    let code = code();
    let (mut cache, mut env) = (cache(1 << 16), env(&code));
    cache.dispatch(Step::Enter { pc: BASE }, &mut env).unwrap();
    env.pressure = true;
    // A hit translates nothing: no flush.
    cache.dispatch(Step::Enter { pc: BASE }, &mut env).unwrap();
    assert_eq!(env.flushed, 0);
    // A new block under pressure: flushed, then translated again into the empty cache.
    let r = cache
        .dispatch(Step::Enter { pc: BASE + 0x100 }, &mut env)
        .unwrap();
    assert_eq!(env.flushed, 1);
    assert_eq!(cache.stats().blocks, 3);
    assert_eq!(
        r,
        Dispatch::Run {
            cache_pc: cache.cache_pc_for(BASE + 0x100).unwrap()
        }
    );
    assert_eq!(cache.lookup(BASE), None);
}
