#!/bin/sh
# The function tracer on functions only this case calls: set_ftrace_filter
# to the getppid, getpgid and getsid syscall functions (__x64_sys_getpgid,
# __x64_sys_getsid; __x64_sys_getppid is an alias of __do_sys_getppid, the
# name ftrace knows),
# current_tracer=function (the kernel patches their fentry nops into calls),
# /kdbt/bin/sysloop 200 on each online CPU in turn: `trace` holds exactly 200
# records of each per CPU for the sysloop tasks, naming the function (not a
# code-cache address); then current_tracer=nop, trace cleared, sysloop
# again: none. Natively, then translated with the functions run on every CPU
# before tracing (hot in each CPU's code cache).
# Skipped when the kernel has no function tracer.
. ./lib.sh
K=/sys/kernel/kdbt
T=/sys/kernel/tracing
N=200
cpus=$(online_cpus)
RECORDS=$((N * $(echo $cpus | wc -w)))
[ -f $T/current_tracer ] || mount -t tracefs nodev $T 2>/dev/null
[ -f $T/available_tracers ] || { echo "# SKIP no tracefs (kernel without CONFIG_FTRACE)"; exit 4; }
grep -qw function $T/available_tracers || { echo "# SKIP no function tracer (tracers: $(cat $T/available_tracers))"; exit 4; }
# Each syscall's traceable function: its __x64_sys_ stub, or the function
# the stub is an alias of (kallsyms, and so ftrace, names one of the two).
FUNCS=
for s in getppid getpgid getsid; do
    f=$(grep -m1 -xE "__(x64|do)_sys_$s" $T/available_filter_functions) || fail "no traceable function for $s"
    FUNCS="$FUNCS $f"
done
FUNCS=${FUNCS# }
trap 'echo nop > $T/current_tracer; : > $T/set_ftrace_filter' EXIT
echo nop > $T/current_tracer || fail "current_tracer nop refused"
: > $T/trace
echo "$FUNCS" > $T/set_ftrace_filter || fail "set_ftrace_filter '$FUNCS' refused"
[ "$(sort $T/set_ftrace_filter | tr '\n' ' ')" = "$(echo $FUNCS | tr ' ' '\n' | sort | tr '\n' ' ')" ] ||
    fail "set_ftrace_filter holds '$(cat $T/set_ftrace_filter | tr '\n' ' ')'"
sysloop() { # what: sysloop N on each online CPU
    for c in $cpus; do
        taskset -c $c /kdbt/bin/sysloop $N > /tmp/ft.out 2>&1 || { cat /tmp/ft.out; fail "$1: sysloop on CPU $c failed"; }
    done
}
# Records per function for the sysloop task, one line.
records() {
    for f in $FUNCS; do
        printf '%s %s; ' $f "$(grep -c "^ *sysloop-[0-9]* .* $f <-" $T/trace)"
    done
}
traced() { # what
    sysloop "$1, untraced"
    echo function > $T/current_tracer || fail "$1: current_tracer function refused"
    sysloop "$1, traced"
    got=$(records)
    echo "$1, function tracer: $got"
    grep -m1 "sysloop-.* ${FUNCS%% *} <-" $T/trace | sed 's/^ */e.g. /'
    want=$(for f in $FUNCS; do printf '%s %s; ' $f $RECORDS; done)
    [ "$got" = "$want" ] || {
        grep -v '^#' $T/trace | head -5
        fail "$1: trace records '$got', want '$want'"
    }
    echo nop > $T/current_tracer || fail "$1: current_tracer nop refused"
    : > $T/trace
    sysloop "$1, after tracing"
    got=$(records)
    want=$(for f in $FUNCS; do printf '%s 0; ' $f; done)
    [ "$got" = "$want" ] || fail "$1: with current_tracer nop, trace records '$got', want '$want'"
    echo "$1, nop tracer: none recorded"
}
traced native
kdbt_load
echo 1 > $K/enabled || fail "enable failed"
traced translated
echo 0 > $K/enabled || fail "disable failed"
echo "blocks $(cat $K/stats/blocks_translated); $(inval_stats)"
kdbt_unload
