#!/usr/bin/python3
"""Host-side reports of kdbt's instrumentation clients (docs/reports.md).

    kdbt_report.py coverage DATA --elf VMLINUX --out DIR [--objects ARCHIVE] [--tree DIR] [--html]
    kdbt_report.py profile DATA --elf VMLINUX --out DIR [--objects ARCHIVE] [--tree DIR] [--plot]

DATA is the guest's /sys/kernel/debug/kdbt/coverage or .../counts (docs/clients.md).
Kernel text is resolved against VMLINUX (link addresses: runtime minus the file's
kaslr_offset): functions from `nm`, basic blocks from `objdump -d`, source lines from
`objdump -l` when VMLINUX has DWARF line info; without it, each function's source file
is the object of ARCHIVE (the kernel tree's vmlinux.a) that defines its symbol.
Module text is reported as module+offset with the symbol of the data line.
"""

import argparse
import bisect
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

# The handlers the summaries always show, found or not.
ENTRY_POINTS = ("entry_SYSCALL_64", "asm_exc_page_fault", "exc_page_fault",
                "asm_sysvec_apic_timer_interrupt", "sysvec_apic_timer_interrupt")
TEXT_TYPES = frozenset("tTwW")
TYPE_RANK = {"T": 0, "t": 1, "W": 2, "w": 3}
# Function padding and CFI preambles: never executed as code of their own.
SKIPPED_PREFIXES = ("__pfx_", "__cfi_")
# objdump's instruction prefixes, before the mnemonic.
PREFIXES = frozenset("lock rep repz repnz repe repne notrack bnd data16 addr32 cs ds es ss fs gs"
                     " xacquire xrelease".split())
# Mnemonics after which a basic block ends, besides j* and loop*.
ENDERS = frozenset("call ret lret lretq iret iretq iretl sysret sysretq sysretl sysexit syscall sysenter"
                   " ud0 ud1 ud2 int3 int int1 into ljmp lcall xbegin".split())
HEX_RE = re.compile(r"[0-9a-f]+")
LOC_RE = re.compile(r"(\S.*):(\d+)(?: \(discriminator \d+\))?$")
SYMBOL_RE = re.compile(r"(.+?)\+0x([0-9a-f]+)/0x([0-9a-f]+)")


@dataclass
class Range:
    """One line of the data file: a translated block, executed `count` times."""
    start: int
    size: int
    insns: int
    symbol: str
    count: int = 1


@dataclass
class Header:
    """The data file's comment lines."""
    client: str = "?"
    ranges: int = 0
    dropped: int = 0
    kaslr_offset: int = 0
    text: tuple = None
    modules: list = field(default_factory=list)


@dataclass
class Function:
    """Code with a name: a vmlinux function (link addresses), a module function (offsets in
    the module's text) or other kernel text (runtime addresses)."""
    name: str
    start: int
    end: int
    file: str
    section: str = "vmlinux"
    blocks: int = 0
    hit: int = 0
    block_hits: list = field(default_factory=list)
    ranges: int = 0
    insns: int = 0
    entries: int = 0
    line: int = 0

    def where(self):
        if self.section in ("vmlinux", "other"):
            return f"{self.start:#x}"
        return f"{self.section}+{self.start:#x}"


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def share(part, whole):
    return f"{100.0 * part / whole:5.1f}%" if whole else "    -"


# --- the data file --------------------------------------------------------------------

def parse_header_line(header, line):
    m = re.search(r"client=(\S+) ranges=(\d+) dropped=(\d+)", line)
    if m:
        header.client, header.ranges, header.dropped = m[1], int(m[2]), int(m[3])
    m = re.search(r"kaslr_offset=(0x[0-9a-fA-F]+)", line)
    if m:
        header.kaslr_offset = int(m[1], 16)
    m = re.search(r"text=(0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)", line)
    if m:
        header.text = (int(m[1], 16), int(m[2], 16))
    m = re.match(r"#\s*module\s+(\S+)\s+(0x[0-9a-fA-F]+)\s+(\S+)", line)
    if m:
        size = m[3]
        header.modules.append((m[1], int(m[2], 16), int(size, 16) if size.startswith("0x") else int(size)))


def parse_range(line):
    """`0x<start> <bytes> <insns> <symbol>` (coverage) or `<count> 0x<start> ...` (counts)."""
    count = 1
    if not line.startswith("0x"):
        count_field, line = line.split(None, 1)
        count = int(count_field)
    fields = line.split(None, 3)
    return Range(int(fields[0], 16), int(fields[1]), int(fields[2]),
                 fields[3].strip() if len(fields) > 3 else "", count)


def parse_data(path):
    header, ranges = Header(), []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#"):
                parse_header_line(header, line)
            elif line.strip():
                ranges.append(parse_range(line))
    if header.ranges and header.ranges != len(ranges):
        print(f"kdbt_report: {path}: header says {header.ranges} ranges, file has {len(ranges)}",
              file=sys.stderr)
    return header, ranges


# --- vmlinux: functions, files, blocks, lines ---------------------------------------------

def text_symbols(elf):
    """(address, size, type, name) of every text symbol of the ELF, size 0 when unknown."""
    for line in run(["nm", "-nS", "--defined-only", elf]).splitlines():
        f = line.split()
        if len(f) == 4 and f[2] in TEXT_TYPES:
            yield int(f[0], 16), int(f[1], 16), f[2], f[3]
        elif len(f) == 3 and f[1] in TEXT_TYPES:
            yield int(f[0], 16), 0, f[1], f[2]


def load_functions(elf, bounds):
    """The ELF's functions inside bounds (link addresses), by address, none overlapping: the
    sized symbols (one name per address), and each unsized symbol outside them up to the next
    symbol. Labels inside a sized function belong to it."""
    symbols = sorted(text_symbols(elf), key=lambda s: (s[0], -s[1], TYPE_RANK[s[2]], s[3]))
    starts = sorted({s[0] for s in symbols})
    base = os.path.basename(elf)
    functions, reach = [], 0
    for addr, size, _, name in symbols:
        if addr < reach or not bounds[0] <= addr < bounds[1] or name.startswith(SKIPPED_PREFIXES):
            continue
        if size:
            end = addr + size
        else:
            i = bisect.bisect_right(starts, addr)
            if i == len(starts):
                continue
            end = starts[i]
        functions.append(Function(name, addr, min(end, bounds[1]), base))
        reach = functions[-1].end
    return functions


def has_line_info(elf):
    return ".debug_line" in run(["objdump", "-h", elf])


def symbol_objects(archive):
    """{text symbol: [(object path, size)]} from `nm -A -S` of an archive (objects in its
    order, for vmlinux.a the link order) or of one object."""
    owners = {}
    for line in run(["nm", "-A", "-S", "--defined-only", archive]).splitlines():
        fields = line.split(" ")
        if fields[-2] in TEXT_TYPES:
            size = int(fields[1], 16) if len(fields) == 4 else 0
            owners.setdefault(fields[-1], []).append((fields[0].split(":")[-2], size))
    return owners


def source_of(obj, tree):
    """The source file an object was built from, relative to the tree when found there."""
    stem = obj[:-2] if obj.endswith(".o") else obj
    for ext in (".c", ".S", ".rs"):
        if tree and os.path.exists(os.path.join(tree, stem + ext)):
            return stem + ext
    return obj


def assign_files(functions, archive, tree):
    """Each function's source file: the object that defines its name. Where several objects
    define it (static functions, copies of a static inline), the copies of one size in
    address order go to the objects defining it with that size in link order, when they are
    as many; else a copy goes to the object of a neighbouring function that defines it, else
    to the first."""
    owners = symbol_objects(archive)
    objects = [None] * len(functions)
    copies = {}
    for i, f in enumerate(functions):
        copies.setdefault((f.name, f.end - f.start), []).append(i)
    for (name, size), indices in copies.items():
        candidates = [o for o, s in owners.get(name, []) if s == size] or [o for o, _ in owners.get(name, [])]
        if len(candidates) == len(indices):
            for i, obj in zip(indices, candidates):
                objects[i] = obj
    for order in (range(len(functions)), reversed(range(len(functions)))):
        near = None
        for i in order:
            if objects[i] is None and any(o == near for o, _ in owners.get(functions[i].name, [])):
                objects[i] = near
            near = objects[i] or near
    for i, f in enumerate(functions):
        candidates = owners.get(f.name)
        obj = objects[i] or (candidates[0][0] if candidates else None)
        if obj:
            f.file = source_of(obj, tree)


def classify(text):
    """(ends a block, direct target or None, padding) of one objdump instruction."""
    tokens = text.split()
    i = 0
    while i < len(tokens) - 1 and tokens[i] in PREFIXES:
        i += 1
    mnemonic = tokens[i] if tokens else ""
    if mnemonic == "int3":
        return True, None, True
    if mnemonic.startswith("nop") or text.endswith("xchg   %ax,%ax"):
        return False, None, True
    if not (mnemonic.startswith(("j", "loop")) or mnemonic in ENDERS):
        return False, None, False
    if mnemonic == "call" and "<__fentry__>" in text:
        return False, None, False          # a nop while ftrace does not trace the function
    operand = tokens[i + 1] if i + 1 < len(tokens) else ""
    return True, int(operand, 16) if HEX_RE.fullmatch(operand) else None, False


def disassemble(elf, bounds, lines):
    """(address, ends, target, padding, (file, line) or None) of each instruction in bounds."""
    cmd = ["objdump", "-d", "-w", "--no-show-raw-insn",
           f"--start-address={bounds[0]:#x}", f"--stop-address={bounds[1]:#x}", elf]
    if lines:
        cmd.insert(1, "-l")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as p:
        loc = None
        for line in p.stdout:
            addr, tab, text = line.rstrip("\n").partition(":\t")
            if tab:
                yield (int(addr, 16), *classify(text), loc)
            elif lines:
                m = LOC_RE.match(line)
                if m:
                    loc = (m[1], int(m[2]))
    if p.returncode:
        raise subprocess.CalledProcessError(p.returncode, cmd)


def by_function(functions, insns):
    """(function, its instructions) for each function with instructions, in address order."""
    it = iter(functions)
    f, body = next(it, None), []
    for insn in insns:
        while f is not None and insn[0] >= f.end:
            if body:
                yield f, body
                body = []
            f = next(it, None)
        if f is None:
            break
        if insn[0] >= f.start:
            body.append(insn)
    if body:
        yield f, body


def basic_blocks(f, body):
    """The function's basic blocks as (start, end, (file, line) of the first instruction):
    split at the direct branch targets inside it and after every branch, call, return and
    trap; blocks of padding only (int3, nops) are left out."""
    leaders = {body[0][0]}
    for i, (_, ends, target, _, _) in enumerate(body):
        if ends:
            if target is not None and f.start <= target < f.end:
                leaders.add(target)
            if i + 1 < len(body):
                leaders.add(body[i + 1][0])
    firsts = [i for i, insn in enumerate(body) if insn[0] in leaders]
    blocks = []
    for first, after in zip(firsts, firsts[1:] + [len(body)]):
        if not all(insn[3] for insn in body[first:after]):
            end = body[after][0] if after < len(body) else f.end
            blocks.append((body[first][0], end, body[first][4]))
    return blocks


class Intervals:
    """A set of address ranges, merged, for overlap queries."""

    def __init__(self, pairs):
        merged = []
        for start, end in sorted(pairs):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [m[0] for m in merged]
        self.ends = [m[1] for m in merged]

    def overlaps(self, start, end):
        i = bisect.bisect_right(self.starts, end - 1) - 1
        return i >= 0 and self.ends[i] > start


class Image:
    """vmlinux as the data file sees it: functions by link address, and where a runtime
    address lands (vmlinux function, module, or other kernel text)."""

    def __init__(self, elf, header, archive=None, tree=None):
        self.elf, self.header, self.tree = elf, header, tree
        k = header.kaslr_offset
        self.bounds = (header.text[0] - k, header.text[1] - k) if header.text else (0, 2 ** 64)
        self.lines = has_line_info(elf)
        self.functions = load_functions(elf, self.bounds)
        self.starts = [f.start for f in self.functions]
        self.files_from = "DWARF line info" if self.lines else "nm only"
        if archive and not self.lines:
            assign_files(self.functions, archive, tree)
            self.files_from = f"the objects of {os.path.basename(archive)}"
        self.extra = {}

    def in_vmlinux(self, addr):
        """In the core kernel's text (anywhere, when the data file does not say where it is)."""
        return self.header.text is None or self.header.text[0] <= addr < self.header.text[1]

    def function_at(self, link):
        i = bisect.bisect_right(self.starts, link) - 1
        if i >= 0 and link < self.functions[i].end:
            return self.functions[i]
        return None

    def module_of(self, addr):
        for name, base, size in self.header.modules:
            if base <= addr < base + size:
                return name, base
        return None

    def owner(self, r):
        """The Function a range starts in, and the range's start in that function's terms."""
        if self.in_vmlinux(r.start):
            link = r.start - self.header.kaslr_offset
            f = self.function_at(link)
            if f:
                return f, link
        module = self.module_of(r.start)
        if module:
            name, base = module
            return self.extra_function(name, f"modules/{name}", r, r.start - base), r.start - base
        return self.extra_function("other", "other/kernel-text", r, r.start), r.start

    def extra_function(self, section, file, r, start):
        """A function known only from the data line's symbol: `name+0xoff/0xsize [module]`."""
        m = SYMBOL_RE.match(r.symbol)
        if m:
            name, begin, size = m[1], start - int(m[2], 16), int(m[3], 16)
        else:
            name, begin, size = r.symbol.split(" ")[0] or f"{r.start:#x}", start, r.size
        key = (section, name, begin)
        if key not in self.extra:
            self.extra[key] = Function(name, begin, begin + size, file, section)
        return self.extra[key]

    def attribute(self, ranges):
        """Each range's owner, with the ranges, entries and instructions counted on it."""
        owned = []
        for r in ranges:
            f, start = self.owner(r)
            f.ranges += 1
            f.insns += r.count * r.insns
            if start == f.start:
                f.entries += r.count
            owned.append((r, f, start))
        return owned

    def relative(self, path):
        """A file name for people: relative to the kernel tree when inside it."""
        if self.tree and path.startswith(self.tree.rstrip("/") + "/"):
            return path[len(self.tree.rstrip("/")) + 1:]
        return path

    def absolute(self, path):
        """A file name for genhtml: a tree-relative one (DWARF) made absolute."""
        return os.path.join(self.tree, path) if self.tree and not os.path.isabs(path) else path


# --- coverage -----------------------------------------------------------------------------

def measure_blocks(image, covered):
    """Counts each vmlinux function's blocks and executed blocks. With line info, also
    returns {(file, line): executed} and {file: [(line, executed)]} of the blocks whose
    first instruction comes from that file."""
    line_hits, blocks_by_file = {}, {}
    for f, body in by_function(image.functions, disassemble(image.elf, image.bounds, image.lines)):
        blocks = basic_blocks(f, body)
        hits = [covered.overlaps(start, end) for start, end, _ in blocks]
        f.blocks, f.hit, f.block_hits = len(blocks), sum(hits), hits
        if image.lines:
            note_lines(f, body, covered, line_hits)
            for (_, _, loc), hit in zip(blocks, hits):
                if loc:
                    blocks_by_file.setdefault(loc[0], []).append((loc[1], hit))
    return line_hits, blocks_by_file


def note_lines(f, body, covered, line_hits):
    """Each source line of the function, executed when one of its instructions was; the
    function's own file and line: those of its first instruction."""
    for i, (addr, _, _, padding, loc) in enumerate(body):
        if loc is None or padding:
            continue
        end = body[i + 1][0] if i + 1 < len(body) else f.end
        line_hits[loc] = line_hits.get(loc, False) or covered.overlaps(addr, end)
    first = next((insn[4] for insn in body if insn[4]), None)
    if first:
        f.file, f.line = first


def coverage(args):
    header, ranges = parse_data(args.data)
    image = Image(args.elf, header, args.objects, args.tree)
    owned = image.attribute(ranges)
    k = header.kaslr_offset
    covered = Intervals((r.start - k, r.start - k + r.size) for r, f, _ in owned if f.section == "vmlinux")
    line_hits, blocks_by_file = measure_blocks(image, covered)
    image.functions = [f for f in image.functions if f.blocks]    # no code: linker-script marks
    for f in image.extra.values():
        f.hit = f.ranges
    os.makedirs(args.out, exist_ok=True)
    files = group_by_file(image)
    info, listing = os.path.join(args.out, "kdbt.info"), os.path.abspath(os.path.join(args.out, "listing"))
    shutil.rmtree(listing, ignore_errors=True)
    write_tracefile(info, image, files, line_hits, blocks_by_file, listing)
    write_function_table(os.path.join(args.out, "functions.tsv"), image, files)
    write_file_table(os.path.join(args.out, "files.tsv"), image, files)
    summary = coverage_summary(header, image, files, line_hits, ranges)
    if args.html:
        prefix = args.tree if image.lines and args.tree else listing
        summary.append(genhtml(info, os.path.join(args.out, "html"), prefix))
    emit(summary, os.path.join(args.out, "summary.txt"))


def group_by_file(image):
    """{file: [functions by address]}: every vmlinux function, and the other executed code."""
    files = {}
    for f in image.functions + list(image.extra.values()):
        files.setdefault(f.file, []).append(f)
    for fs in files.values():
        fs.sort(key=lambda f: f.start)
    return files


def lcov_names(functions):
    """Function names unique within one file (clones of a static inline can share one)."""
    seen = {}
    for f in functions:
        seen[f.name] = seen.get(f.name, 0) + 1
    return [f.name if seen[f.name] == 1 else f"{f.name}@{f.where()}" for f in functions]


def listing_line(f):
    blocks = f"{f.hit}/{f.blocks} blocks" if f.section == "vmlinux" else f"{f.ranges} ranges"
    return f"{f.where():>20}  {f.name}  {blocks}"


def write_listing(root, file, functions):
    """A stand-in source for genhtml where there is no line info: one line per function."""
    path = os.path.join(root, file.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as out:
        out.writelines(listing_line(f) + "\n" for f in functions)
    return os.path.abspath(path)


def write_tracefile(path, image, files, line_hits, blocks_by_file, listing_root):
    """The lcov tracefile. With line info: source lines, functions at their first line, one
    branch (BRDA) per basic block at the line of its first instruction, taken when the
    block was executed. Without (and for modules): one line per function in a listing
    (OUT/listing/FILE) that stands in for the source, its blocks as its branches."""
    lines_by_file = {}
    for (file, line), hit in line_hits.items():
        lines_by_file.setdefault(file, {})[line] = hit
    with open(path, "w") as out:
        out.write("TN:kdbt\n")
        for file in sorted(set(files) | set(lines_by_file)):
            functions = files.get(file, [])
            if file in lines_by_file:
                numbered = [(f.line, f) for f in functions if f.line]
                write_record(out, image.absolute(file), numbered, lines_by_file[file], blocks_by_file.get(file, []))
            else:
                numbered = list(enumerate(functions, 1))
                blocks = [(n, hit) for n, f in numbered for hit in f.block_hits]
                write_record(out, write_listing(listing_root, image.relative(file), functions), numbered,
                             {n: f.hit > 0 for n, f in numbered}, blocks)


def write_record(out, source, numbered, lines, blocks):
    """One SF record: functions as (line, Function), lines {line: executed}, blocks
    [(line, executed)]."""
    names = lcov_names([f for _, f in numbered])
    out.write(f"SF:{source}\n")
    for (n, _), name in zip(numbered, names):
        out.write(f"FN:{n},{name}\n")
    for (_, f), name in zip(numbered, names):
        out.write(f"FNDA:{1 if f.hit else 0},{name}\n")
    out.write(f"FNF:{len(numbered)}\nFNH:{sum(1 for _, f in numbered if f.hit)}\n")
    for i, (line, hit) in enumerate(blocks):
        out.write(f"BRDA:{line},0,{i},{1 if hit else 0}\n")
    out.write(f"BRF:{len(blocks)}\nBRH:{sum(1 for _, hit in blocks if hit)}\n")
    for line in sorted(lines):
        out.write(f"DA:{line},{1 if lines[line] else 0}\n")
    out.write(f"LF:{len(lines)}\nLH:{sum(1 for hit in lines.values() if hit)}\nend_of_record\n")


def write_function_table(path, image, files):
    with open(path, "w") as out:
        out.write("file\tfunction\taddress\tblocks_executed\tblocks\tranges\n")
        for file in sorted(files):
            for f in files[file]:
                blocks = f.blocks if f.section == "vmlinux" else ""
                out.write(f"{image.relative(file)}\t{f.name}\t{f.where()}\t{f.hit}\t{blocks}\t{f.ranges}\n")


def file_totals(image, files):
    """(file, functions executed, functions, blocks executed, blocks) of vmlinux's files."""
    totals = []
    for file, fs in files.items():
        fs = [f for f in fs if f.section == "vmlinux"]
        if fs:
            totals.append((image.relative(file), sum(1 for f in fs if f.hit), len(fs),
                           sum(f.hit for f in fs), sum(f.blocks for f in fs)))
    return sorted(totals)


def write_file_table(path, image, files):
    with open(path, "w") as out:
        out.write("file\tfunctions_executed\tfunctions\tblocks_executed\tblocks\n")
        for row in file_totals(image, files):
            out.write("\t".join(map(str, row)) + "\n")


def coverage_summary(header, image, files, line_hits, ranges):
    kernel = image.functions
    totals = file_totals(image, files)
    blocks, hit = sum(f.blocks for f in kernel), sum(f.hit for f in kernel)
    fn_hit = sum(1 for f in kernel if f.hit)
    s = [f"kdbt coverage: {len(ranges)} ranges (client={header.client}, dropped={header.dropped}),"
         f" kaslr_offset={header.kaslr_offset:#x}",
         f"vmlinux: {os.path.abspath(image.elf)} (files from {image.files_from})",
         f"  functions {fn_hit:>7} / {len(kernel):<7} executed {share(fn_hit, len(kernel))}",
         f"  blocks    {hit:>7} / {blocks:<7} executed {share(hit, blocks)}"]
    if image.lines:
        lh = sum(1 for v in line_hits.values() if v)
        s.append(f"  lines     {lh:>7} / {len(line_hits):<7} executed {share(lh, len(line_hits))}")
    else:
        s.append("  lines     (no DWARF line info in this vmlinux: function granularity)")
    files_hit = sum(1 for t in totals if t[3])
    s.append(f"  files     {files_hit:>7} / {len(totals):<7} with an executed block")
    s += extra_summary(image)
    s.append("top files by blocks executed:     executed / blocks")
    for file, _, _, bh, bt in sorted(totals, key=lambda t: (-t[3], t[0]))[:8]:
        s.append(f"  {bh:>7} / {bt:<7} {share(bh, bt)}  {file}")
    s.append("top functions by blocks executed: executed / blocks")
    for f in sorted(kernel, key=lambda f: (-f.hit, f.start))[:8]:
        s.append(f"  {f.hit:>7} / {f.blocks:<7} {share(f.hit, f.blocks)}  {f.name}  ({image.relative(f.file)})")
    s.append("entry points:")
    for name in ENTRY_POINTS:
        f = next((f for f in kernel if f.name == name), None)
        if f:
            s.append(f"  {name:<32} {f.hit:>4} / {f.blocks:<4} blocks {share(f.hit, f.blocks)}"
                     f"  ({image.relative(f.file)})")
        else:
            s.append(f"  {name:<32} not in this vmlinux")
    return s


def extra_summary(image):
    """One line per module with executed code, one for other kernel text."""
    by_section = {}
    for f in image.extra.values():
        by_section.setdefault(f.section, []).append(f)
    lines = []
    for section in sorted(by_section, key=lambda s: (s == "other", s)):
        fs = by_section[section]
        what = "other kernel text" if section == "other" else f"module {section}"
        names = ", ".join(f.name for f in sorted(fs, key=lambda f: -f.ranges)[:3])
        lines.append(f"{what}: {len(fs)} functions, {sum(f.ranges for f in fs)} ranges ({names})")
    return lines


def genhtml(info, html, prefix):
    """genhtml's report, file names shown without prefix; its Branches column counts basic
    blocks."""
    shutil.rmtree(html, ignore_errors=True)
    run(["genhtml", "--quiet", "--function-coverage", "--branch-coverage", "--ignore-errors", "source",
         "--prefix", prefix, "--title", "kdbt kernel coverage", "--output-directory", html, info])
    return f"html: {os.path.join(html, 'index.html')}"


def emit(lines, path):
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(path, "w") as out:
        out.write(text)


# --- profile ------------------------------------------------------------------------------

def profile(args):
    header, ranges = parse_data(args.data)
    image = Image(args.elf, header, args.objects, args.tree)
    owned = image.attribute(ranges)
    functions = [f for f in image.functions + list(image.extra.values()) if f.insns]
    functions.sort(key=lambda f: (-f.insns, f.start))
    total = sum(f.insns for f in functions)
    os.makedirs(args.out, exist_ok=True)
    write_profile_functions(os.path.join(args.out, "functions.tsv"), image, functions, total)
    write_profile_blocks(os.path.join(args.out, "blocks.tsv"), owned)
    summary = profile_summary(header, image, functions, owned, total)
    if args.plot and functions:
        summary.append(plot(args.out, image, functions, total))
    emit(summary, os.path.join(args.out, "summary.txt"))


def write_profile_functions(path, image, functions, total):
    with open(path, "w") as out:
        out.write("instructions\tshare\tentries\tranges\tfunction\taddress\tfile\n")
        for f in functions:
            out.write(f"{f.insns}\t{100.0 * f.insns / total:.3f}\t{f.entries}\t{f.ranges}\t{f.name}"
                      f"\t{f.where()}\t{image.relative(f.file)}\n")


def hottest_blocks(owned):
    return sorted(owned, key=lambda o: (-o[0].count, o[0].start))


def write_profile_blocks(path, owned):
    with open(path, "w") as out:
        out.write("count\tinsns\tinstructions\taddress\tfunction\tsymbol\n")
        for r, f, _ in hottest_blocks(owned):
            out.write(f"{r.count}\t{r.insns}\t{r.count * r.insns}\t{r.start:#x}\t{f.name}\t{r.symbol}\n")


def profile_summary(header, image, functions, owned, total):
    executions = sum(r.count for r, _, _ in owned)
    by_section = {}
    for f in functions:
        key = f.section if f.section in ("vmlinux", "other") else "modules"
        by_section[key] = by_section.get(key, 0) + f.insns
    split = ", ".join(f"{k} {v} ({share(v, total).strip()})" for k, v in sorted(by_section.items()))
    s = [f"kdbt profile: {len(owned)} ranges (client={header.client}, dropped={header.dropped}),"
         f" {executions} block executions, {total} instructions executed",
         f"  by text: {split}",
         f"{'hottest functions:':<19}{'instructions':>12} {'share':>6} {'entries':>12}  function (file)"]
    for f in functions[:15]:
        s.append(f"  {f.insns:>29} {share(f.insns, total)} {f.entries:>12}  {f.name}  ({image.relative(f.file)})")
    s.append(f"{'hottest blocks:':<26}{'count':>5} {'insns':>6}  {'address':<18}  symbol")
    for r, _, _ in hottest_blocks(owned)[:10]:
        s.append(f"  {r.count:>29} {r.insns:>6}  {r.start:#018x}  {r.symbol}")
    s.append(f"{'entry points:':<34} {'instructions':>12} {'share':>6} {'entries':>12}")
    by_name = {f.name: f for f in image.functions}
    for name in ENTRY_POINTS:
        f = by_name.get(name)
        if f:
            s.append(f"  {name:<32} {f.insns:>12} {share(f.insns, total)} {f.entries:>12}")
        else:
            s.append(f"  {name:<32} not in this vmlinux")
    return s


def plot(out, image, functions, total):
    """A bar chart of the 20 functions that executed the most instructions (and, when the
    functions' files are known, of the source directories), as SVG and PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dirs = {}
    for f in functions:
        d = os.path.dirname(image.relative(f.file)) or f.file
        dirs[d] = dirs.get(d, 0) + f.insns
    top_dirs = sorted(dirs.items(), key=lambda kv: -kv[1])[:12]
    panels = [("function", [(f.name, f.insns) for f in functions[:20]])]
    if len(dirs) > 1:
        panels.append(("source directory", top_dirs))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4 + 3.5 * len(panels)), squeeze=False,
                             gridspec_kw={"height_ratios": [len(p[1]) for p in panels]})
    for ax, (what, bars) in zip(axes[:, 0], panels):
        labels = [name if len(name) <= 45 else name[:42] + "..." for name, _ in bars]
        shares = [100.0 * v / total for _, v in bars]
        ax.barh(range(len(bars)), shares, color="#4472c4")
        ax.set_yticks(range(len(bars)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"% of the {total} kernel instructions executed, by {what}")
        for y, v in enumerate(shares):
            ax.text(v, y, f" {v:.1f}%", va="center", fontsize=7)
    fig.suptitle("kdbt profile: where the kernel's instructions went")
    fig.tight_layout()
    paths = [os.path.join(out, "top-functions." + ext) for ext in ("svg", "png")]
    for path in paths:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return "plot: " + ", ".join(paths)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", choices=("coverage", "profile"))
    p.add_argument("data", help="the guest's debugfs coverage or counts file")
    p.add_argument("--elf", required=True, help="the kernel's vmlinux (link addresses)")
    p.add_argument("--out", required=True, help="directory for the reports")
    p.add_argument("--objects", help="archive or object whose members give function files (vmlinux.a)")
    p.add_argument("--tree", help="kernel tree: sources for file names, prefix stripped from paths")
    p.add_argument("--html", action="store_true", help="coverage: run genhtml into OUT/html")
    p.add_argument("--plot", action="store_true", help="profile: draw OUT/top-functions.{svg,png}")
    args = p.parse_args(argv)
    coverage(args) if args.report == "coverage" else profile(args)


if __name__ == "__main__":
    main()
