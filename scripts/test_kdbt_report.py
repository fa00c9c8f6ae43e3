#!/usr/bin/python3
"""Host tests of kdbt_report.py: a tiny two-file ELF assembled with gcc (with and without
DWARF), synthetic coverage and counts files in the format of docs/clients.md, and the
tracefile, tables and summaries checked against numbers worked out by hand from the
assembly below. Run: /usr/bin/python3 -m unittest discover -s scripts -p 'test_*.py'"""

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kdbt_report  # noqa: E402

# a.S: a local dup (1 block), f_straight (1), f_branch (4; the int3 after ret is
# padding), a local helper (1). b.S: another dup, the same code (1), __fentry__ (1),
# f_call (2: `call __fentry__` does not end a block), another local helper, 3 bytes
# longer (1), f_unsized (no .size: up to f_last; 1), f_last (1). The dups are told apart
# by link order only (a neighbour would give b's to a.S), the helpers by size.
DUP = """\
	.type dup, @function
dup:
	mov $7, %eax
	ret
	.size dup, .-dup
"""
A_S = """\
	.text
	.p2align 4
""" + DUP + """\
	.globl f_straight
	.type f_straight, @function
f_straight:
	mov %edi, %eax
	add %esi, %eax
	ret
	.size f_straight, .-f_straight
	int3
	int3
	.globl f_branch
	.type f_branch, @function
f_branch:
	test %edi, %edi
	je 1f
	add $1, %eax
	jmp 2f
1:	sub $1, %eax
2:	ret
	int3
	.size f_branch, .-f_branch
	.type helper, @function
helper:
	xor %eax, %eax
	ret
	.size helper, .-helper
"""
B_S = """\
	.text
	.p2align 4
""" + DUP + """\
	.globl __fentry__
	.type __fentry__, @function
__fentry__:
	ret
	.size __fentry__, .-__fentry__
	.globl f_call
	.type f_call, @function
f_call:
	call __fentry__
	mov %edi, %eax
	call f_branch
	nop
	ret
	.size f_call, .-f_call
	.type helper, @function
helper:
	mov $2, %eax
	ret
	.size helper, .-helper
	.globl f_unsized
f_unsized:
	inc %eax
	ret
	.globl f_last
	.type f_last, @function
f_last:
	ret
	.size f_last, .-f_last
"""
LINK = 0xffffffff81000000
KASLR = 0x200000
MODULE = "# module kdbt_cov 0xffffffffa0000000 4096"


def build(tmp, debug):
    """vmlinux (linked at LINK) and vmlinux.a from a.S and b.S; vmlinux's text symbols."""
    for name, text in (("a.S", A_S), ("b.S", B_S)):
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
        subprocess.run(["gcc", "-c"] + (["-g"] if debug else []) + [name, "-o", name[0] + ".o"],
                       cwd=tmp, check=True)
    subprocess.run(["ar", "rcs", "vmlinux.a", "a.o", "b.o"], cwd=tmp, check=True)
    subprocess.run(["ld", "-static", "-e", "f_straight", f"-Ttext={LINK:#x}", "--build-id=none",
                    "a.o", "b.o", "-o", "vmlinux"], cwd=tmp, check=True)
    return list(kdbt_report.text_symbols(os.path.join(tmp, "vmlinux")))


def header(client, n, end):
    return [f"# kdbt client={client} ranges={n} dropped=0", f"# kaslr_offset={KASLR:#x}",
            f"# text={LINK + KASLR:#x}-{end + KASLR:#x}", MODULE]


def run_report(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        kdbt_report.main(argv)
    return out.getvalue()


def records(info):
    """{basename of SF: {key: [values]}} of an lcov tracefile."""
    result, current = {}, None
    with open(info) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition(":")
            if key == "SF":
                current = result.setdefault(os.path.basename(value), {})
            elif current is not None and value:
                current.setdefault(key, []).append(value)
    return result


def table(path):
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    return [dict(zip(rows[0], row)) for row in rows[1:]]


class Fixture(unittest.TestCase):
    """One ELF for the class's tests, each test's data and reports in a directory of its own."""
    debug = False

    @classmethod
    def setUpClass(cls):
        cls.elf_dir = tempfile.mkdtemp(prefix="kdbt-report-test-")
        symbols = build(cls.elf_dir, cls.debug)
        cls.sym = {name: addr for addr, _, _, name in symbols}
        cls.helpers = sorted(addr for addr, _, _, name in symbols if name == "helper")
        cls.dups = sorted(addr for addr, _, _, name in symbols if name == "dup")
        cls.end = cls.sym["f_last"] + 1

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.elf_dir)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(dir=self.elf_dir)

    def data(self, name, lines):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def args(self, report, data, *extra):
        return [report, data, "--elf", os.path.join(self.elf_dir, "vmlinux"), "--objects",
                os.path.join(self.elf_dir, "vmlinux.a"), "--tree", self.elf_dir, "--out",
                os.path.join(self.tmp, report), *extra]


class Coverage(Fixture):
    def ranges(self):
        s, rt = self.sym, lambda a: a + KASLR
        return [f"{rt(s['f_straight']):#x} 5 3 f_straight+0x0/0x5",
                f"{rt(s['f_branch']):#x} 4 2 f_branch+0x0/0xd",
                f"{rt(s['f_branch']) + 9:#x} 4 2 f_branch+0x9/0xd",
                f"{rt(s['f_call']):#x} 12 3 f_call+0x0/0xe",
                f"{rt(s['f_call']) + 5:#x} 7 2 f_call+0x5/0xe",
                f"{rt(self.helpers[1]):#x} 6 2 helper+0x0/0x6",
                f"{rt(self.dups[1]):#x} 6 2 dup+0x0/0x6",
                "0xffffffffa0000010 8 2 kdbt_cov_arm0+0x10/0x20 [kdbt_cov]",
                "0xffffffffc0001000 8 2 bpf_prog_abc+0x0/0x40"]

    def report(self):
        ranges = self.ranges()
        data = self.data("coverage.txt", header("coverage", len(ranges), self.end) + ranges)
        return run_report(self.args("coverage", data))

    def test_summary_totals_and_entry_points(self):
        summary = self.report()
        self.assertRegex(summary, r"functions\s+5 / 10\s+executed\s+50.0%")
        self.assertRegex(summary, r"blocks\s+7 / 14\s+executed\s+50.0%")
        self.assertRegex(summary, r"files\s+2 / 2\s+with an executed block")
        self.assertIn("module kdbt_cov: 1 functions, 1 ranges (kdbt_cov_arm0)", summary)
        self.assertIn("other kernel text: 1 functions, 1 ranges (bpf_prog_abc)", summary)
        self.assertRegex(summary, r"entry_SYSCALL_64\s+not in this vmlinux")
        self.assertRegex(summary, r"3 / 4\s+75.0%  f_branch  \(a.S\)")

    def test_tracefile(self):
        self.report()
        rec = records(os.path.join(self.tmp, "coverage", "kdbt.info"))
        a, b = rec["a.S"], rec["b.S"]
        self.assertEqual(a["FNDA"], ["0,dup", "1,f_straight", "1,f_branch", "0,helper"])
        self.assertEqual(b["FNDA"], ["1,dup", "0,__fentry__", "1,f_call", "1,helper", "0,f_unsized", "0,f_last"])
        self.assertEqual((a["BRF"], a["BRH"], b["BRF"], b["BRH"]), (["7"], ["4"], ["7"], ["3"]))
        self.assertEqual(rec["kdbt_cov"]["FNDA"], ["1,kdbt_cov_arm0"])
        self.assertEqual(rec["kernel-text"]["FNDA"], ["1,bpf_prog_abc"])
        if not self.debug:
            self.assertEqual(a["FN"], ["1,dup", "2,f_straight", "3,f_branch", "4,helper"])
            self.assertEqual(a["BRDA"], ["1,0,0,0", "2,0,1,1", "3,0,2,1", "3,0,3,0", "3,0,4,1", "3,0,5,1",
                                         "4,0,6,0"])

    def test_tables(self):
        self.report()
        files = {r["file"]: r for r in table(os.path.join(self.tmp, "coverage", "files.tsv"))}
        self.assertEqual(files["a.S"]["blocks_executed"] + "/" + files["a.S"]["blocks"], "4/7")
        functions = table(os.path.join(self.tmp, "coverage", "functions.tsv"))
        unsized = next(r for r in functions if r["function"] == "f_unsized")
        self.assertEqual((unsized["blocks"], unsized["address"]), ("1", f"{self.sym['f_unsized']:#x}"))
        dups = [(r["file"], r["address"], r["blocks_executed"]) for r in functions if r["function"] == "dup"]
        self.assertEqual(dups, [("a.S", f"{self.dups[0]:#x}", "0"), ("b.S", f"{self.dups[1]:#x}", "1")])
        module = next(r for r in functions if r["function"] == "kdbt_cov_arm0")
        self.assertEqual((module["file"], module["address"]), ("modules/kdbt_cov", "kdbt_cov+0x0"))


class CoverageWithLines(Coverage):
    """The same ELF with DWARF line info: a line per instruction but padding (f_call's nop),
    functions at their first line."""
    debug = True

    def test_lines(self):
        summary = self.report()
        self.assertRegex(summary, r"lines\s+14 / 25\s+executed")
        rec = records(os.path.join(self.tmp, "coverage", "kdbt.info"))
        line = A_S.splitlines().index("f_branch:") + 2
        self.assertIn(f"{line},f_branch", rec["a.S"]["FN"])
        self.assertEqual((rec["a.S"]["LF"], rec["a.S"]["LH"]), (["13"], ["7"]))
        self.assertEqual((rec["b.S"]["LF"], rec["b.S"]["LH"]), (["12"], ["7"]))
        self.assertIn(f"{line + 4},0,4,1", rec["a.S"]["BRDA"])


class Profile(Fixture):
    def report(self, *extra):
        s, rt = self.sym, lambda a: a + KASLR
        ranges = [f"100 {rt(s['f_branch']):#x} 4 2 f_branch+0x0/0xd",
                  f"60 {rt(s['f_branch']) + 9:#x} 4 2 f_branch+0x9/0xd",
                  f"40 {rt(s['f_call']):#x} 12 3 f_call+0x0/0xe",
                  f"10 {rt(self.helpers[1]):#x} 6 2 helper+0x0/0x6",
                  "5 0xffffffffa0000010 8 2 kdbt_cov_arm0+0x10/0x20 [kdbt_cov]"]
        data = self.data("counts.txt", header("count", len(ranges), self.end) + ranges)
        return run_report(self.args("profile", data, *extra))

    def test_functions(self):
        summary = self.report()
        self.assertIn("215 block executions, 470 instructions executed", summary)
        rows = table(os.path.join(self.tmp, "profile", "functions.tsv"))
        got = [(r["function"], r["instructions"], r["entries"], r["ranges"]) for r in rows]
        self.assertEqual(got, [("f_branch", "320", "100", "2"), ("f_call", "120", "40", "1"),
                               ("helper", "20", "10", "1"), ("kdbt_cov_arm0", "10", "0", "1")])
        self.assertEqual(rows[0]["share"], "68.085")

    def test_blocks(self):
        self.report()
        rows = table(os.path.join(self.tmp, "profile", "blocks.tsv"))
        self.assertEqual([(r["count"], r["instructions"], r["function"]) for r in rows[:2]],
                         [("100", "200", "f_branch"), ("60", "120", "f_branch")])

    def test_plot(self):
        summary = self.report("--plot")
        for ext in ("svg", "png"):
            path = os.path.join(self.tmp, "profile", "top-functions." + ext)
            self.assertGreater(os.path.getsize(path), 1000, path)
        self.assertIn("plot: ", summary)


if __name__ == "__main__":
    unittest.main()
