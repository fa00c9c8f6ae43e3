#!/usr/bin/env python3
"""Judges a VM console log: KTAP results and plan, kernel errors, timeout,
and the "decode:" lines of the load test against objdump of vmlinux.

usage: judge-vm.py CONSOLE_LOG VMLINUX QEMU_EXIT_STATUS [PASS_NAME]
Prints one line per check (named PASS_NAME/check when given) and
"vm: N passed, N failed"; exits 1 on failure.
"""
import re, subprocess, sys

# Kernel trouble anywhere in the log fails the run: oopses, BUG/WARN
# reports, kernel panics, and Rust panics ("rust_kernel: panicked at ...",
# named on its own so that the pattern says so). The command-line echo is
# exempt: it names panic=/oops= options. A WARN report is "WARNING: CPU: ..."
# (or "WARNING: at" from old kernels); the mitigation notices of an Intel
# boot ("RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable") are
# not kernel trouble.
KERNEL_ERRORS = re.compile(r"Oops|BUG|WARNING: (?:CPU|at)|panicked|panic|general protection")


def link_address(vmlinux, symbol):
    """The address of `symbol` in vmlinux (the running kernel's, minus KASLR's offset)."""
    out = subprocess.run(["nm", vmlinux], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2] == symbol:
            return int(fields[0], 16)
    return None


def objdump_insns(vmlinux, addr, count):
    out = subprocess.run(
        ["objdump", "-d", "-M", "intel", "--no-addresses", "--show-raw-insn", vmlinux,
         f"--start-address={addr:#x}", f"--stop-address={addr + 15 * count:#x}"],
        capture_output=True, text=True, check=True).stdout
    insns = []
    for line in out.splitlines():
        m = re.match(r"^\s+((?:[0-9a-f]{2} )+)\s*(\S+)(.*)", line)
        if m:
            insns.append((m.group(1).replace(" ", ""), m.group(2), m.group(3)))
    return insns[:count]


# The live kernel differs from vmlinux where ftrace turned `call __fentry__`
# into a 5-byte nop at boot; 66 90 is `xchg ax,ax` to objdump, `nop` to iced.
FTRACE_NOP = "0f1f440000"


def same_insn(got, want):
    (gb, gm), (wb, wm, rest) = got, want
    if gb == FTRACE_NOP and wm == "call" and "<__fentry__>" in rest:
        return True
    return gb == wb and (wm.startswith(gm) or (gb == "6690" and (gm, wm) == ("nop", "xchg")))


def main():
    log_path, vmlinux, qemu_rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prefix = f"{sys.argv[4]}/" if len(sys.argv) > 4 else ""
    try:
        text = open(log_path, errors="replace").read().replace("\r", "")
    except OSError:
        text = ""  # the VM never started: every check below fails
    lines = text.splitlines()
    results = []  # (ok, name, detail)

    plan, seen, diag = None, {}, []
    for line in lines:
        # A kernel message can land on the same console line as the plan.
        if not line.startswith("#") and (m := re.match(r"^(?:.*\s)?1\.\.(\d+)$", line)):
            plan = int(m.group(1))
        elif m := re.match(r"^(ok|not ok) (\d+) (\S+)(.*)$", line):
            ok = m.group(1) == "ok"
            # A failed case's detail: its FAIL lines and its last diagnostics.
            detail = [m.group(4).strip()]
            if not ok:
                detail += [d for d in diag[:-12] if d.startswith("# FAIL")] + diag[-12:]
            seen[int(m.group(2))] = (ok, m.group(3), "\n".join(detail))
            diag = []
        elif line.startswith("# "):
            diag.append(line)
    if not any("TAP version 13" in line for line in lines) or plan is None:
        results.append((False, "ktap_plan", "no 'TAP version 13' and plan in the console log"))
    else:
        results.append((len(seen) == plan, "ktap_plan", f"plan 1..{plan}, {len(seen)} results"))
    for n in sorted(seen):
        ok, name, detail = seen[n]
        results.append((ok, f"vm:{name}", detail))

    errors = [i for i, l in enumerate(lines)
              if KERNEL_ERRORS.search(l) and not re.search(r"(Kernel c|C)ommand line:", l)]
    # Show the first report whole (RIP, registers, call trace), then any later error lines.
    shown = lines[errors[0]:errors[0] + 40] if errors else []
    shown += [lines[i] for i in errors if i >= errors[0] + 40][:20]
    results.append((not errors, "no_kernel_errors", "\n".join(shown)))
    results.append((qemu_rc == 0, "vm_exit", "timeout" if qemu_rc == 124 else f"qemu exit {qemu_rc}"))
    results.append(("kdbt-guest: done" in text, "guest_finished", "guest did not reach poweroff"))

    decoded = [re.search(r"decode: kfree 0x([0-9a-f]+) ([0-9a-f]+) (\w+)", l) for l in lines]
    decoded = [(int(m.group(1), 16), m.group(2), m.group(3).lower()) for m in decoded if m]
    if not decoded and "module_load_decode" not in [name for _, name, _ in seen.values()]:
        # A selection (kdbt_test.only) that never loads kdbt: nothing to check.
        results.append((True, "decode_matches_objdump", "not checked: kdbt never loaded"))
    elif not decoded:
        results.append((False, "decode_matches_objdump", "no decode: lines in the log"))
    else:
        # The first line is kfree itself: with KASLR the kernel runs elsewhere than linked.
        link = link_address(vmlinux, "kfree")
        want = objdump_insns(vmlinux, link if link is not None else decoded[0][0], len(decoded))
        got = [(b, mn) for _, b, mn in decoded]
        mism = [f"kdbt {g} vs objdump {w[:2]}" for g, w in zip(got, want) if not same_insn(g, w)]
        ok = len(want) == len(got) and not mism
        results.append((ok, "decode_matches_objdump",
                        f"{len(got)} instructions" + ("" if ok else ": " + "; ".join(mism))))

    passed = sum(1 for ok, _, _ in results if ok)
    for ok, name, detail in results:
        print(f"{'ok' if ok else 'not ok'} - {prefix}{name}")
        if not ok and detail:
            for d in detail.splitlines():
                print(f"    {d}")
    print(f"console log: {log_path}")
    print(f"vm: {passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


main()
