#!/usr/bin/env bash
# Runs the VM suite (tests/vm) in the guest and judges it on the host:
# KTAP results, plan, kernel errors in the console log, timeout, and the
# decode check against objdump. One boot per pass:
#   default    -smp 2, the whole suite, default code-cache size
#   mincache   -smp 2, the whole suite but hostile_gsbase and client_count
#              (which run at the smallest size themselves) and client_sysfs
#              (client switches: minutes), every test's cache at the smallest
#              size the module allows, shortened by kdbt_test.quick=1
#   smp1, smp4, smp8, smp64max2
#              -smp 1 / 4 / 8 / 64 with the kernel's maxcpus=2 (64 possible CPU
#              ids, 2 online at boot: QEMU's "-smp 2,maxcpus=64" gives the guest
#              no hotpluggable CPUs it counts, MADT revision 1 under TCG),
#              the reduced suite $REDUCED (kdbt_test.only=...): CPUs online,
#              the workloads translated at the default cache size identical
#              to native, enable/disable under load, CPU hotplug, module text
#              reuse and static-key flips on every CPU, each shortened by
#              kdbt_test.quick=1
#   smp2max1   -smp 2 with the kernel's maxcpus=1: the kernel boots on one
#              CPU with its uniprocessor alternatives (lock prefixes patched
#              out); only smp_alternatives, which brings CPU 1 online under
#              translation (the kernel patches its SMP code back in) and runs
#              a lock-heavy load on both CPUs (not shortened)
# With KDBT_KERNEL=distro (the Debian-configuration kernel, docs/distro.md),
# results named distro-<pass>/<check>:
#   all4       -smp 4, the whole suite, shortened by kdbt_test.quick=1
#   rethunk    retbleed=force: return thunks and UNRET entry on the AMD-vendor
#              TCG CPU (which otherwise needs none), translated_workloads
#   intel      an Intel model (Skylake) with pti=off, translated_workloads
#   intelpti   the same with PTI on, as the kernel selects it for that CPU:
#              pti_refused (enable refuses with EOPNOTSUPP)
# Prints KTAP-style results named <pass>/<check> and one count line
# "vm: N passed, N failed" over all passes.
# KDBT_PASSES="default smp4" runs only those passes; KDBT_TESTS=a,b runs only
# those tests (names without t- and .sh) in every pass, e.g.
#   KDBT_PASSES=default KDBT_TESTS=hostile_gsbase bash scripts/vm-test.sh
# KDBT_VM_TIMEOUT: per boot (default 1500 s for the whole suite, 900 s for a
# reduced one, 300 s for smp2max1, each scaled by the host's measured
# slowness). Under KDBT_DEADLINE (.ci/run) a pass that would not end before
# it is skipped ("skip - <pass>", counted on the line "vm: N skipped") and no
# boot runs past it (docs/testing.md, "Time budget").
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
# The module's minimum cache_kb (control::MIN_CACHE_KB); t-smallest_cache
# checks that one KiB less is refused, so the two cannot drift apart.
MIN_CACHE_KB=3072
REDUCED=cpus_online,translated_workloads,enable_disable_under_load,cpu_hotplug,module_reuse,static_key
vmlinux="$("$here/kernel.sh")/vmlinux"
passed=0; failed=0; skipped=0
if [ "$KDBT_KERNEL" = distro ]; then
    passes="${KDBT_PASSES:-all4 rethunk intel intelpti}"
else
    passes="${KDBT_PASSES:-default mincache smp1 smp4 smp8 smp64max2 smp2max1}"
fi
# Skylake, as TCG can run it (QEMU drops what it lacks), without CX16 (see
# docs/distro.md): the kernel's Intel paths.
INTEL=Skylake-Client-v4,-cx16
for pass in $passes; do
    smp=2; mem=1G; only=; limit=1500; boot_cpus=; cpu=; extra=
    case "$KDBT_KERNEL/$pass" in
        distro/all4) smp=4 ;;
        distro/rethunk) extra="retbleed=force"; only=translated_workloads ;;
        distro/intel) cpu=$INTEL; extra="pti=off"; only=translated_workloads ;;
        distro/intelpti) cpu=$INTEL; only=pti_refused ;;
        distro/*) echo "not ok - distro-$pass/known_pass"; echo "    unknown pass '$pass'"; failed=$((failed + 1)); continue ;;
        */default) ;;
        */mincache) ;;
        */smp1) smp=1 ;;
        */smp4) smp=4 ;;
        */smp8) smp=8; mem=2G ;;
        */smp64max2) smp=64; boot_cpus=2 ;;
        */smp2max1) smp=2; boot_cpus=1 ;;
        *) echo "not ok - $pass/known_pass"; echo "    unknown pass '$pass'"; failed=$((failed + 1)); continue ;;
    esac
    case "$KDBT_KERNEL/$pass" in
        small/mincache) only=$(cd "$KDBT_ROOT/tests/vm" && ls t-*.sh | sed 's/^t-//; s/\.sh$//' | grep -vxE 'hostile_gsbase|client_count|client_sysfs' | paste -sd,) ;;
        small/smp2max1) only=smp_alternatives; limit=300 ;;
        small/smp*) only=$REDUCED; limit=900 ;;
        distro/rethunk | distro/intel | distro/intelpti) limit=600 ;;
    esac
    only="${KDBT_TESTS:-$only}"
    # Results of the distro kernel's passes are named distro-<pass>/...
    name="$pass"; [ "$KDBT_KERNEL" = distro ] && name="distro-$pass"
    log="$KDBT_BUILD/vm/test-console-$pass.log"
    rm -f "$log"
    # tsc=reliable: no clocksource watchdog, which on a loaded host marks the TSC
    # unstable and flips sched_clock_stable's jump label mid-test; MTTCG then
    # ran a stale int3 of that patch once, natively at boot (smp8, Oops:
    # int3 at sched_clock_stable+0x1: docs/testing.md, "Known flake").
    append="${KDBT_APPEND:-}${extra:+ $extra} tsc=reliable kdbt_test.cpus=${boot_cpus:-$smp}"
    [ -n "$boot_cpus" ] && append="$append maxcpus=$boot_cpus kdbt_test.possible=$smp"
    [ "$pass" = mincache ] && append="$append kdbt_test.cache_kb=$MIN_CACHE_KB"
    [ -n "$only" ] && append="$append kdbt_test.only=$only"
    # The extra -smp boots, mincache and all4: shorter workloads and fewer
    # cycles (workload.inc).
    case "$KDBT_KERNEL/$pass" in
        small/smp2max1) ;;
        small/smp* | small/mincache | distro/all4) append="$append kdbt_test.quick=1" ;;
    esac
    slow=$(host_slowness)
    base=$(estimate "$KDBT_KERNEL" "$pass")
    est=$(( base * slow / 100 ))
    left=$(budget_left)
    # A pass that would not end before the deadline is not started: CI's
    # limit would cut the whole run, results and count line included. Half
    # the estimate again as margin: a pass ran 1.7 times its scaled estimate
    # once, beside other VMs, and was cut at the deadline.
    if [ -z "${KDBT_TESTS:-}" ] && [ "$left" -lt $(( est * 3 / 2 + 120 )) ]; then
        echo "skip - $name: expected to take ${est} s (host slowness ${slow}%), ${left} s left before the deadline"
        skipped=$((skipped + 1)); continue
    fi
    limit=$(( ${KDBT_VM_TIMEOUT:-$limit} * slow / 100 ))
    echo "== vm pass: $name (-smp $smp -m $mem${cpu:+ -cpu $cpu}${extra:+, $extra}${only:+, tests $only})"
    t0=$(date +%s)
    for attempt in 1 2; do
        left=$(budget_left)
        [ "$limit" -gt $(( left - 60 )) ] && limit=$(( left > 120 ? left - 60 : 60 ))
        KDBT_SMP="$smp" KDBT_MEM="$mem" KDBT_APPEND="$append" KDBT_QUIET=1 KDBT_CPU="${cpu:-${KDBT_CPU:-}}" \
            "$here/vm.sh" test "$log" "$limit"
        rc=$?
        # QEMU's multi-threaded TCG can run a stale int3 of a jump-label patch
        # the kernel makes while it boots (docs/testing.md, "Known flake"):
        # an oops before kdbt was loaded and before the first test is the
        # host's, and the pass boots once more (its time counts).
        [ "$attempt" = 1 ] && grep -aq 'Oops: int3' "$log" && ! grep -aq 'kdbt: loaded' "$log" &&
            ! grep -aq '^TAP version' "$log" || break
        echo "# retry - $name: native int3 oops while booting, before kdbt was loaded ($(grep -a -m1 'RIP:' "$log" | tr -s ' '))"
        cp "$log" "$log.flake"
    done
    took=$(( $(date +%s) - t0 ))
    echo "== vm pass: $name took $took s (timeout $limit s)"
    # Only a whole pass says how fast this host is.
    [ -z "${KDBT_TESTS:-}" ] && note_slowness "$base" "$took"
    out="$(python3 "$here/judge-vm.py" "$log" "$vmlinux" "$rc" "$name")"
    echo "$out" | grep -v '^vm: '
    read -r p f < <(echo "$out" | sed -n 's/^vm: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p')
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-1}))
done
echo "vm: $skipped skipped"
echo "vm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
