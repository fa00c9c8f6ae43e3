#!/bin/sh
# NMI storms on translated code: kdbt_nmi.ko (tests/vm/modules/nmi) sends
# rounds of NMIs to every other online CPU while a fork/exec load runs on
# all CPUs, from each CPU in turn, natively and then translated. Its
# NMI_LOCAL handler counts the NMIs it sent and saw, those that interrupted
# kernel mode, and those whose regs->ip (kernel mode) is not kernel or
# module text (kernel_text_address()): kdbt's code cache is neither, so an
# NMI frame that still holds a code-cache PC counts as bad. Bad must be 0;
# translated, NMIs must have interrupted the kernel and entered kdbt's NMI
# stub (entries_by_vector 2); the kernel survives (the host checks the log).
. ./lib.sh
M=kdbt_nmi
P=/proc/$M
K=/sys/kernel/kdbt
ROUNDS=$([ "$(cmdline_opt quick 0)" = 1 ] && echo 300 || echo 1000) # per sending CPU
cpus=$(online_cpus)
[ "$(echo $cpus | wc -w)" -ge 2 ] || { echo "# SKIP one CPU online: nobody to send NMIs to"; exit 4; }
insmod /kdbt/modules/$M.ko || fail "insmod $M failed"
cleanup() { touch /tmp/stop-load; echo 0 > $K/enabled 2>/dev/null; rmmod $M 2>/dev/null; }
trap cleanup EXIT

# start_load plus one fork/exec loop pinned to each online CPU.
loads() {
    start_load
    trap cleanup EXIT
    pinned_pids=
    for c in $cpus; do
        taskset -c $c sh -c 'while [ ! -e /tmp/stop-load ]; do /bin/true; echo x | cat > /dev/null; done' \
            >/dev/null 2>&1 </dev/null &
        pinned_pids="$pinned_pids $!"
    done
}
stop_loads() { stop_load; wait $pinned_pids; trap cleanup EXIT; }
nmi_vector() { awk '$1 == 2 { n = $2 } END { print n + 0 }' $K/stats/entries_by_vector; }
# storm NAME: a storm from every online CPU in turn; leaves the counters in
# $sent $handled $kmode $bad $first $timeouts.
storm() {
    echo 0 > $P || fail "$1: resetting the counters failed"
    t0=$(cut -d' ' -f1 /proc/uptime)
    for c in $cpus; do
        taskset -c $c sh -c "echo $ROUNDS > $P" || fail "$1: storm from CPU $c failed"
    done
    echo "$1: $ROUNDS rounds from each of CPUs $(echo $cpus) in $(awk "BEGIN { print $(cut -d' ' -f1 /proc/uptime) - $t0 }") s"
    cat $P > /tmp/nmi.$1 || fail "$1: reading $P failed"
    line=$(head -1 /tmp/nmi.$1)
    echo "$1: $line"
    set -- $line
    [ "$1 $3 $5 $7 $9 ${11}" = "sent handled kernel_mode bad first_bad timeouts" ] || fail "unexpected $P: $line"
    sent=$2 handled=$4 kmode=$6 bad=$8 first=${10} timeouts=${12}
}
# where IP: the vmalloc area holding it (/tmp/vmallocinfo) and the offset
# in it. kdbt's regions: 12 KiB of thunks (the resume thunk at 0x2060, the
# NMI stub at 0x2100), then the code-cache arena.
where() {
    awk '{ split($1, r, "-"); print r[1], r[2], $0 }' /tmp/vmallocinfo | while read -r s e rest; do
        if [ $(($1)) -ge $((s)) ] && [ $(($1)) -lt $((e)) ]; then
            off=$(($1 - s))
            kind="code-cache arena"; [ $off -lt $((12 << 10)) ] && kind="thunk page"
            printf '%s: offset %#x (%s) in %s\n' "$1" $off "$kind" "$rest"
            return
        fi
    done
}
check() { # NAME
    [ "$handled" -gt 0 ] || fail "$1: no NMI handled ($line)"
    if [ "$bad" -ne 0 ]; then
        sed 1d /tmp/nmi.$1
        [ -f /tmp/vmallocinfo ] && sed 1d /tmp/nmi.$1 | while read -r _ ip _; do where $ip; done
    fi
    [ "$bad" -eq 0 ] || fail "$1: $bad NMIs interrupted kernel mode at a non-text ip, the first at $first ($line)"
    [ "$handled" -le "$sent" ] || fail "$1: more NMIs handled than sent ($line)"
}

loads
storm native
stop_loads
check native
native="$line"

kdbt_load
echo 1 > $K/enabled || fail "enable failed"
loads
v0=$(nmi_vector); r0=$(cat $K/stats/pc_rewrites)
storm translated
v1=$(nmi_vector); r1=$(cat $K/stats/pc_rewrites)
# The code caches exist only while enabled: where the bad IPs were, if any.
kr=$(cat /proc/sys/kernel/kptr_restrict)
echo 1 > /proc/sys/kernel/kptr_restrict
cp /proc/vmallocinfo /tmp/vmallocinfo
echo "$kr" > /proc/sys/kernel/kptr_restrict
stop_loads
echo "translated: NMI stub entries (vector 2) $v0 -> $v1, pc_rewrites $r0 -> $r1, blocks $(cat $K/stats/blocks_translated)"
echo 0 > $K/enabled || fail "disable failed"
check translated
[ "$kmode" -gt 0 ] || fail "translated: no NMI interrupted kernel mode ($line)"
[ "$v1" -gt "$v0" ] || fail "translated: no NMI entered kdbt's NMI stub (entries_by_vector 2: $v0 -> $v1)"
kdbt_unload
rmmod $M || fail "rmmod $M failed"
trap - EXIT
echo "native:     $native"
echo "translated: $line"
