#!/usr/bin/env python3
"""Compile the module's Rust dependencies with exactly the kernel's rustc flags.

`alloc` comes from the pinned rust-web-src; iced-x86, bitflags, spin, talc (and
what they pull in) come from the cargo registry, at the versions and with the
features that Cargo.lock and `cargo tree` resolve for the normal build of
kdbt-module-deps (src/module/deps, a package that only names them);
kdbt-engine itself comes from this repo. Each crate is emitted as an
rlib-metadata file plus an object; the objects are linked into one relocatable
object that Kbuild links into kdbt.ko.

usage: rust-deps.py KERNEL_TREE OUT_DIR
"""
import json, os, shlex, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUSTC = os.environ.get("KDBT_RUSTC", "/usr/bin/rustc")
ROOT_PACKAGE = "kdbt-module-deps"
ALLOC_SRC = "/usr/lib/rustlib/src/rust/library/alloc/src/lib.rs"
# Lint and output flags of core.o that do not apply to other crates.
DROP_PREFIXES = ("-W", "-A", "-D", "--emit", "--crate-", "-L", "--edition", "--cfg",
                 "-Zbinary_dep_depinfo")


def die(msg):
    sys.exit(f"rust-deps: {msg}")


def kernel_flags(tree):
    """The codegen flags the kernel used for rust/core.o."""
    try:
        with open(os.path.join(tree, "rust/.core.o.cmd")) as f:
            line = f.readline()
    except OSError as e:
        die(f"cannot read the kernel's rust/.core.o.cmd ({e}); is CONFIG_RUST built?")
    cmd = line.split(":=", 1)[1].split(";", 1)[0]
    toks = shlex.split(cmd)
    toks = toks[toks.index(RUSTC) + 1:] if RUSTC in toks else die(f"core.o was not built by {RUSTC}")
    flags, skip = [], False
    for t in toks:
        if skip:
            skip = False
            continue
        if t in ("--crate-type", "--crate-name", "--cfg", "-L", "--emit"):
            skip = True
            continue
        if t.startswith(DROP_PREFIXES) or t.endswith(".rs"):
            continue
        if t.startswith("--target=") or t.startswith("@"):
            t = t.replace("./", tree + "/", 1)
        flags.append(t)
    return flags


def cargo(*args):
    r = subprocess.run(["cargo", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        die(f"'cargo {' '.join(args)}' failed:\n{r.stderr}")
    return r.stdout


def crate_plan():
    """Crates in dependency order: (name, src, edition, features, externs)."""
    cargo("fetch", "--locked")
    meta = json.loads(cargo("metadata", "--format-version", "1", "--locked"))
    pkgs = {p["id"]: p for p in meta["packages"]}
    # Features as resolved for kdbt-engine's own (normal, kernel) build.
    feats = {}
    for line in cargo("tree", "-p", ROOT_PACKAGE, "-e", "normal", "--prefix", "none",
                      "-f", "{p}|{f}", "--locked").splitlines():
        p, _, f = line.partition("|")
        name, ver = p.split()[:2]
        feats[(name, ver.lstrip("v"))] = [x for x in f.split(",") if x]
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = next(i for i, p in pkgs.items() if p["name"] == ROOT_PACKAGE)
    order, seen = [], set()

    def visit(pid):
        if pid in seen:
            return
        seen.add(pid)
        externs = []
        for d in nodes[pid]["deps"]:
            if not any(k["kind"] in (None, "normal") for k in d["dep_kinds"]):
                continue
            if (pkgs[d["pkg"]]["name"], pkgs[d["pkg"]]["version"]) not in feats:
                continue  # optional dependency not enabled for this build
            visit(d["pkg"])
            externs.append(d["name"])
        p = pkgs[pid]
        lib = next(t for t in p["targets"] if "lib" in t["kind"])
        order.append((lib["name"], lib["src_path"], p["edition"],
                      feats.get((p["name"], p["version"]), []), externs))

    visit(root)
    return order[:-1]  # the root package names the crates and has no code


def rustc(tree, flags, out, name, src, edition, features, externs, cap_lints):
    cmd = [RUSTC, *flags, f"--edition={edition}", "--crate-type", "rlib",
           "--crate-name", name, f"-Cmetadata=kdbt-{name}",
           f"--emit=obj={out}/{name}.o", f"--emit=metadata={out}/lib{name}.rmeta",
           "-L", f"{tree}/rust", "-L", out, f"--cap-lints={cap_lints}"]
    for f in features:
        cmd += ["--cfg", f'feature="{f}"']
    for e in externs:
        cmd += ["--extern", e]
    cmd.append(src)
    # In the output directory: rustc writes its temporary objects to the working
    # directory, so two builds against one kernel tree would collide there.
    r = subprocess.run(cmd, cwd=out, capture_output=True, text=True,
                       env=dict(os.environ, RUSTC_BOOTSTRAP="1"))
    if r.returncode != 0:
        die(f"compiling {name} failed:\n{' '.join(cmd)}\n{r.stderr}")
    if r.stderr.strip() and cap_lints != "allow":
        sys.stderr.write(r.stderr)
    return f"{out}/{name}.o"


def main():
    if len(sys.argv) != 3:
        die(__doc__.strip().splitlines()[-1])
    tree, out = map(os.path.abspath, sys.argv[1:])
    os.makedirs(out, exist_ok=True)
    flags = kernel_flags(tree)
    objs = [rustc(tree, flags, out, "alloc", ALLOC_SRC, "2021", [], [], "allow")]
    for name, src, edition, features, externs in crate_plan():
        own = name == "kdbt_engine"
        objs.append(rustc(tree, flags, out, name, src, edition, features,
                          externs + (["alloc"] if own else []), "warn" if own else "allow"))
    combined = os.path.join(out, "kdbt_deps.o")
    subprocess.run(["ld", "-r", "-o", combined, *objs], check=True)
    print(combined)


if __name__ == "__main__":
    main()
