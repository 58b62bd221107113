#!/usr/bin/env python3
"""Keeps ARCHITECTURE.md and the dependency arrows true (run by scripts/check-architecture.sh).

Checks, from `cargo metadata` and `cargo tree` (no builds):
1. ARCHITECTURE.md's crate table names exactly the workspace members.
2. Every dependency between workspace crates is in ALLOWED_EDGES (normal and build
   dependencies) or DEV_EDGES (dev-dependencies), and every listed edge exists, so the
   lists stay true. A failure names the edge. DEV_ONLY crates are never a normal
   dependency.
3. The sans-IO crates (SANS_IO) have no tokio in their normal dependency tree, and
   their non-test source does not use tokio, std::fs, std::process or OS randomness
   (OsRng, getrandom, thread_rng). Non-test source: every .rs file under the crate's
   src/ except `#[cfg(test)]` items (a `#[cfg(test)] mod x { .. }` block, a
   `#[cfg(test)] mod x;` file and anything else under a bare `#[cfg(test)]`) and files
   that start with `#![cfg(test)]`; tests/, benches/ and examples/ are not src/.
   Comments and string literals are not code. IO_EXEMPT names the only files allowed
   a named exception, with the reason; an exemption no longer used fails too.
4. The crates in HASH_ORDER_CRATES (the cores, where iteration order reaches output)
   carry a clippy.toml that bans HashMap/HashSet iteration (every HASH_ITERATION_METHODS
   path) and repeats every rule of the workspace clippy.toml (clippy reads the crate's
   file instead of the workspace one, not both), and their crate root enables
   `clippy::iter_over_hash_type` (the `for` loops disallowed-methods cannot see).
5. ARCHITECTURE.md's dependency diagram (between the crate-edges markers) is the one
   `--diagram` prints from the edge lists.

Usage: check_architecture.py [--diagram | --edges | --self-test]
  --diagram    print the diagram ARCHITECTURE.md must carry
  --edges      print the real edges in the lists' format (to review and paste)
  --self-test  test the source scanner, the edge diff and the diagram on samples
"""

import json
import os
import re
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    sys.exit("check-architecture: needs Python 3.11 or later (tomllib)")

# Workspace crate -> the workspace crates it may depend on (normal and build
# dependencies). An edge missing here fails the check, and so does a listed edge that no
# longer exists. Change this list, then paste `--diagram` into ARCHITECTURE.md.
ALLOWED_EDGES = """
weft-agent          -> weft-api-client weft-dns weft-fs weft-identity weft-netcfg weft-policy weft-proto weft-relay-client weft-tls weft-tunnel
weft-api-client     -> weft-proto
weft-bin            -> weft-cli
weft-cli            -> weft-api-client weft-identity weft-policy weft-proto
weft-controller     -> weft-identity weft-policy weft-proto weft-tls
weft-controller-bin -> weft-cli weft-controller
weft-dns            -> weft-fs weft-proto
weft-identity       -> weft-fs weft-proto
weft-lab            -> weft-identity weft-proto
weft-lab-bin        -> weft-lab
weft-policy         -> weft-proto
weft-relay          -> weft-api-client weft-proto weft-relay-core weft-tls
weft-relay-bin      -> weft-relay
weft-relay-client   -> weft-api-client weft-proto weft-relay-core
weft-relay-core     -> weft-identity weft-proto
weft-sim            -> weft-identity weft-policy weft-proto weft-tunnel
weft-tls            -> weft-fs
weft-tunnel         -> weft-identity weft-policy weft-proto
weftd               -> weft-agent weft-identity weft-proto
"""

# Test-only edges (dev-dependencies), checked the same way but kept apart: they never
# reach a shipped binary, so they may point anywhere that does not make a cycle in the
# normal graph.
DEV_EDGES = """
weft-controller-bin -> weft-api-client weft-identity weft-proto
weft-lab-bin        -> weft-api-client weft-controller weft-identity weft-proto
weft-relay-bin      -> weft-api-client weft-identity weft-proto weft-relay-client weft-relay-core
weft-relay-client   -> weft-identity
"""

# Sans-IO crates: decisions only, driven by their callers with time, randomness and
# bytes. ARCHITECTURE.md marks them.
SANS_IO = ["weft-proto", "weft-identity", "weft-policy", "weft-tunnel", "weft-relay-core"]

# Crates for tests only: a dev-dependency of others, never a normal one.
DEV_ONLY = ["weft-sim"]

# (crate, file under the crate) -> {check: reason}. Nothing else is exempt.
IO_EXEMPT = {
    ("weft-identity", "src/keyfile.rs"): {
        "std::fs": "the 0600 key-file format reads and writes its file (load/save)",
    },
}

# Crates whose clippy.toml bans iterating hash containers.
HASH_ORDER_CRATES = ["weft-proto", "weft-identity", "weft-policy", "weft-tunnel", "weft-relay-core", "weft-dns"]

HASH_ITERATION_METHODS = [
    "std::collections::HashMap::iter",
    "std::collections::HashMap::iter_mut",
    "std::collections::HashMap::keys",
    "std::collections::HashMap::values",
    "std::collections::HashMap::values_mut",
    "std::collections::HashMap::into_keys",
    "std::collections::HashMap::into_values",
    "std::collections::HashMap::drain",
    "std::collections::HashMap::extract_if",
    "std::collections::HashSet::iter",
    "std::collections::HashSet::drain",
    "std::collections::HashSet::extract_if",
    "std::collections::HashSet::union",
    "std::collections::HashSet::intersection",
    "std::collections::HashSet::difference",
    "std::collections::HashSet::symmetric_difference",
]
ITER_OVER_HASH_LINT = re.compile(r"#!\[(warn|deny|forbid)\([^)]*\bclippy::iter_over_hash_type\b")

DIAGRAM_BEGIN = "<!-- crate-edges:begin"
DIAGRAM_END = "<!-- crate-edges:end -->"

FORBIDDEN = [
    ("tokio", re.compile(r"\btokio\b")),
    ("std::fs", None),  # std paths: see std_paths()
    ("std::process", None),
    ("OS randomness", re.compile(r"\b(OsRng|getrandom|thread_rng)\b")),
]


def edge_list(edges):
    """The edges in ALLOWED_EDGES' format (what --edges prints)."""
    srcs = sorted({a for a, _ in edges})
    width = max((len(a) for a in srcs), default=0)
    return "".join(f"{a.ljust(width)} -> {' '.join(sorted(b for x, b in edges if x == a))}\n" for a in srcs)


def parse_edges(text):
    edges = set()
    for line in text.strip().splitlines():
        src, _, dsts = line.partition("->")
        for dst in dsts.split():
            edges.add((src.strip(), dst))
    return edges


# ---- workspace facts ---------------------------------------------------------------


class CargoFailed(Exception):
    pass


def cargo(*args):
    run = subprocess.run(["cargo", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise CargoFailed(f"cargo {' '.join(args)} failed:\n{run.stderr.strip()}")
    return run.stdout


def workspace():
    """(packages by name, normal edges, dev edges) among the workspace members."""
    meta = json.loads(cargo("metadata", "--no-deps", "--format-version", "1", "--locked"))
    members = set(meta["workspace_members"])
    pkgs = {p["name"]: p for p in meta["packages"] if p["id"] in members}
    normal, dev = set(), set()
    for name, p in pkgs.items():
        for d in p["dependencies"]:
            if d["name"] not in pkgs:
                continue
            (dev if d["kind"] == "dev" else normal).add((name, d["name"]))
    # A crate that is both a normal and a dev dependency is a normal edge.
    return pkgs, normal, dev - normal


def diff_edges(kind, actual, allowed):
    errors = []
    for a, b in sorted(actual - allowed):
        errors.append(f"{kind} edge {a} -> {b} is not in the allowed list (scripts/check_architecture.py)")
    for a, b in sorted(allowed - actual):
        errors.append(f"listed {kind} edge {a} -> {b} does not exist; remove it from the list")
    return errors


def dev_only_errors(normal):
    return [
        f"{a} depends on {b}, which is dev-only: make it a dev-dependency"
        for a, b in sorted(normal)
        if b in DEV_ONLY
    ]


# ---- source scan -------------------------------------------------------------------


def blank(text, start, end):
    """text with [start, end) replaced by spaces, newlines kept (line numbers hold)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def strip_comments_and_strings(src):
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
        elif m := re.compile(r'b?r(#*)"').match(src, i):
            if i and (src[i - 1].isalnum() or src[i - 1] == "_"):
                out.append(c)
                i += 1
                continue
            close = '"' + m.group(1)
            j = src.find(close, m.end())
            j = n if j < 0 else j + len(close)
        elif c == '"' or src.startswith('b"', i) and not (i and (src[i - 1].isalnum() or src[i - 1] == "_")):
            j = src.index('"', i) + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
        elif m := re.compile(r"b?'(\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'\n])'").match(src, i):
            j = m.end()
        else:
            out.append(c)
            i += 1
            continue
        out.append(re.sub(r"[^\n]", " ", src[i:j]))
        i = j
    return "".join(out)


def matching(code, i, open_ch, close_ch):
    """Index after the bracket closing the one at code[i]."""
    depth = 0
    for j in range(i, len(code)):
        if code[j] == open_ch:
            depth += 1
        elif code[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(code)


CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")


def remove_test_items(code):
    """(code without #[cfg(test)] items, names of `#[cfg(test)] mod x;` files)."""
    test_mods = []
    while m := CFG_TEST.search(code):
        i = m.end()
        while True:  # further attributes on the same item
            a = re.compile(r"\s*#\s*\[").match(code, i)
            if not a:
                break
            i = matching(code, a.end() - 1, "[", "]")
        semi, brace = code.find(";", i), code.find("{", i)
        if semi >= 0 and (brace < 0 or semi < brace):
            if mod := re.compile(r"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;").match(code, i):
                test_mods.append(mod.group(1))
            end = semi + 1
        else:
            end = matching(code, brace, "{", "}") if brace >= 0 else len(code)
        code = blank(code, m.start(), end)
    return code, test_mods


def std_paths(code, module):
    """Offsets where `std::<module>` is named, also inside `use std::{..}` groups."""
    hits = [m.start() for m in re.finditer(r"\bstd\s*::\s*" + module + r"\b", code)]
    for m in re.finditer(r"\bstd\s*::\s*\{", code):
        group = code[m.end() : matching(code, m.end() - 1, "{", "}") - 1]
        depth, item_start = 0, 0
        for k, ch in enumerate(group + ","):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                if re.match(r"\s*" + module + r"\b", group[item_start:k]):
                    hits.append(m.end() + item_start)
                item_start = k + 1
    return hits


def scan_source(code):
    """[(offset, check)] of forbidden uses in code (comments and strings already out)."""
    found = []
    for name, pattern in FORBIDDEN:
        if pattern is None:
            found += [(o, name) for o in std_paths(code, name.split("::")[1])]
        else:
            found += [(m.start(), name) for m in pattern.finditer(code)]
    return sorted(found)


def module_dir(path):
    base = os.path.basename(path)
    if base in ("lib.rs", "main.rs", "mod.rs"):
        return os.path.dirname(path)
    return path[: -len(".rs")]


def scan_crate(name, crate_dir):
    src_dir = os.path.join(crate_dir, "src")
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(src_dir) for f in fs if f.endswith(".rs")
    )
    code_of, test_files = {}, set()
    for path in files:
        with open(path, encoding="utf-8") as fh:
            code = strip_comments_and_strings(fh.read())
        if re.match(r"\s*#!\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]", code):
            test_files.add(path)
            continue
        code, test_mods = remove_test_items(code)
        for mod in test_mods:
            test_files.add(os.path.join(module_dir(path), mod + ".rs"))
            test_files.add(os.path.join(module_dir(path), mod, "mod.rs"))
        code_of[path] = code
    # A file below a test-only module is test-only too.
    test_dirs = [p[: -len(".rs")] + os.sep for p in test_files] + [
        os.path.dirname(p) + os.sep for p in test_files if p.endswith("mod.rs")
    ]
    errors, used = [], set()
    for path, code in code_of.items():
        if path in test_files or any(path.startswith(d) for d in test_dirs):
            continue
        rel = os.path.relpath(path, crate_dir)
        exempt = IO_EXEMPT.get((name, rel), {})
        for offset, check in scan_source(code):
            if check in exempt:
                used.add((rel, check))
                continue
            line = code.count("\n", 0, offset) + 1
            errors.append(f"{os.path.relpath(path)}:{line}: {check} in {name}, a sans-IO crate")
    for (crate, rel), checks in sorted(IO_EXEMPT.items()):
        for check in sorted(checks):
            if crate == name and (rel, check) not in used:
                errors.append(f"IO_EXEMPT lets {crate}'s {rel} use {check}, which it no longer does; remove the exemption")
    return errors


def tokio_in_tree(name):
    tree = cargo("tree", "-e", "normal", "-p", name, "--locked", "--prefix", "none")
    return any(line.startswith("tokio v") for line in tree.splitlines())


# ---- clippy.toml of the cores ------------------------------------------------------


def rule_key(rule):
    return rule["path"] if isinstance(rule, dict) else rule


def check_clippy_toml(name, crate_dir, root):
    path = os.path.join(crate_dir, "clippy.toml")
    rel = os.path.relpath(path)
    if not os.path.exists(path):
        return [f"{rel} is missing: {name} must ban HashMap/HashSet iteration (copy a core's clippy.toml)"]
    with open(path, "rb") as fh:
        conf = tomllib.load(fh)
    errors = []
    for key, value in root.items():
        if isinstance(value, list):
            have = {rule_key(r) for r in conf.get(key, [])}
            missing = [rule_key(r) for r in value if rule_key(r) not in have]
            if missing:
                errors.append(f"{rel} lacks the workspace clippy.toml's {key}: {', '.join(missing)}")
        elif conf.get(key) != value:
            errors.append(f"{rel} lacks the workspace clippy.toml's {key} = {value!r}")
    have = {rule_key(r) for r in conf.get("disallowed-methods", [])}
    missing = [m for m in HASH_ITERATION_METHODS if m not in have]
    if missing:
        errors.append(f"{rel} does not ban {', '.join(missing)}")
    return errors


def check_iter_lint(name, pkg):
    roots = [t["src_path"] for t in pkg["targets"] if "lib" in t["kind"] or "bin" in t["kind"]]
    errors = []
    for root in roots:
        with open(root, encoding="utf-8") as fh:
            if not ITER_OVER_HASH_LINT.search(fh.read()):
                errors.append(f"{os.path.relpath(root)} lacks #![warn(clippy::iter_over_hash_type)] ({name} is a core)")
    return errors


# ---- diagram -----------------------------------------------------------------------


def layers(names, edges):
    deps = {n: sorted(b for a, b in edges if a == n) for n in names}
    memo = {}

    def layer(n, seen=()):
        if n not in memo:
            if n in seen:
                raise SystemExit(f"dependency cycle through {n}")
            memo[n] = 1 + max((layer(d, seen + (n,)) for d in deps[n]), default=-1)
        return memo[n]

    return {n: layer(n) for n in names}, deps


def mark(name):
    return " [sans-IO]" if name in SANS_IO else " [dev-only]" if name in DEV_ONLY else ""


def diagram(names, edges, dev_edges):
    level, deps = layers(names, edges)
    width = max(len(n + mark(n)) for n in names)
    out = [
        "Dependencies between workspace crates, top layer first (a crate sits one layer",
        "above its highest dependency). [sans-IO]: no tokio, files, processes or OS",
        "randomness; [dev-only]: a dev-dependency of others, never a normal one.",
        "",
    ]
    for lv in sorted(set(level.values()), reverse=True):
        for i, n in enumerate(sorted(n for n in names if level[n] == lv)):
            label = n + mark(n)
            head = (f"{lv:>2}  " if i == 0 else "    ") + label.ljust(width)
            out += arrow(head, deps[n])
    if dev_edges:
        out += ["", "Test-only (dev-dependencies):", ""]
        for n in sorted({a for a, _ in dev_edges}):
            out += arrow("    " + n.ljust(width), sorted(b for a, b in dev_edges if a == n))
    return "\n".join(out) + "\n"


def arrow(head, deps, limit=88):
    """`head -> deps`, wrapped under the first dependency past `limit` columns."""
    if not deps:
        return [head.rstrip()]
    lines, line = [], head + "  -> " + deps[0]
    for d in deps[1:]:
        if len(line) + 1 + len(d) > limit:
            lines.append(line)
            line = " " * (len(head) + 5) + d
        else:
            line += " " + d
    return lines + [line]


def documented_diagram(text):
    begin = text.find(DIAGRAM_BEGIN)
    end = text.find(DIAGRAM_END)
    if begin < 0 or end < begin:
        return None
    body = text[text.index("\n", begin) + 1 : end]
    m = re.fullmatch(r"\s*```text\n(.*?)```\s*", body, re.S)
    return m.group(1) if m else None


# ---- main --------------------------------------------------------------------------


def check():
    errors = []
    pkgs, normal, dev = workspace()
    with open("ARCHITECTURE.md", encoding="utf-8") as fh:
        arch = fh.read()

    documented = set(re.findall(r"^\| `([a-z0-9-]+)` ", arch, re.M))
    for n in sorted(set(pkgs) - documented):
        errors.append(f"workspace member {n} is not in ARCHITECTURE.md's crate table")
    for n in sorted(documented - set(pkgs)):
        errors.append(f"ARCHITECTURE.md's crate table names {n}, which is not a workspace member")

    errors += diff_edges("normal", normal, parse_edges(ALLOWED_EDGES))
    errors += diff_edges("dev", dev, parse_edges(DEV_EDGES))
    errors += dev_only_errors(normal)

    for n in SANS_IO:
        if n not in pkgs:
            errors.append(f"sans-IO crate {n} is not a workspace member; update SANS_IO")
            continue
        if tokio_in_tree(n):
            errors.append(f"{n} is a sans-IO crate but tokio is in its dependency tree (cargo tree -e normal -p {n} -i tokio)")
        errors += scan_crate(n, os.path.dirname(pkgs[n]["manifest_path"]))

    with open("clippy.toml", "rb") as fh:
        root = tomllib.load(fh)
    for n in HASH_ORDER_CRATES:
        if n not in pkgs:
            errors.append(f"{n} (HASH_ORDER_CRATES) is not a workspace member")
            continue
        errors += check_clippy_toml(n, os.path.dirname(pkgs[n]["manifest_path"]), root)
        errors += check_iter_lint(n, pkgs[n])

    if not errors or documented_diagram(arch) is not None:
        want = diagram(sorted(pkgs), normal, dev)
        have = documented_diagram(arch)
        if have is None:
            errors.append(f"ARCHITECTURE.md has no dependency diagram between '{DIAGRAM_BEGIN} -->' and '{DIAGRAM_END}'")
        elif have != want:
            errors.append("ARCHITECTURE.md's dependency diagram differs from the crate edges; paste the output of scripts/check-architecture.sh --diagram")
    return errors


def self_test():
    import unittest

    class T(unittest.TestCase):
        def scan(self, src):
            code, mods = remove_test_items(strip_comments_and_strings(src))
            return [c for _, c in scan_source(code)], mods

        def test_finds_each_forbidden_use(self):
            found, _ = self.scan(
                "use std::fs::File;\nuse std::{io, process::Command};\n"
                "fn f() { let _ = ::std::fs::read(\"x\"); tokio::spawn(); rand_core::OsRng; }\n"
            )
            self.assertEqual(found, ["std::fs", "std::process", "std::fs", "tokio", "OS randomness"])

        def test_grouped_imports_count_only_top_level_items(self):
            self.assertEqual(self.scan("use std::{fs, io};")[0], ["std::fs"])
            self.assertEqual(self.scan("use std::{io::{self, fs_like}, os::unix::fs};")[0], [])

        def test_comments_strings_and_test_items_are_not_code(self):
            src = (
                "// std::fs in a comment\n/* tokio /* nested */ OsRng */\n"
                'const S: &str = "std::process"; const R: &str = r#"tokio "quoted""#;\n'
                "const C: char = '{';\n"
                "#[cfg(test)]\n#[allow(dead_code)]\nmod tests { fn f() { let _ = std::fs::read(\"}\"); } }\n"
                "#[cfg(test)]\nfn helper() { tokio::spawn(); }\n"
                "#[cfg(test)]\nuse rand_core::OsRng;\n"
                "#[cfg(test)]\nmod more;\n"
                "fn after() { std::process::exit(1) }\n"
            )
            found, mods = self.scan(src)
            self.assertEqual(found, ["std::process"])
            self.assertEqual(mods, ["more"])

        def test_cfg_any_test_is_not_test_only(self):
            self.assertEqual(self.scan("#[cfg(any(test, feature = \"x\"))]\nuse std::fs;")[0], ["std::fs"])

        def test_line_numbers_survive_stripping(self):
            code, _ = remove_test_items(strip_comments_and_strings("/* a\nb */\n#[cfg(test)]\nmod t {\n}\nuse std::fs;\n"))
            self.assertEqual(code.count("\n", 0, scan_source(code)[0][0]) + 1, 6)

        def test_edges_report_both_directions(self):
            errs = diff_edges("normal", {("a", "b"), ("a", "c")}, parse_edges("a -> b d"))
            self.assertEqual(
                errs,
                [
                    "normal edge a -> c is not in the allowed list (scripts/check_architecture.py)",
                    "listed normal edge a -> d does not exist; remove it from the list",
                ],
            )

        def test_scan_crate_skips_test_files_and_checks_exemptions(self):
            import tempfile

            with tempfile.TemporaryDirectory() as crate:
                os.makedirs(os.path.join(crate, "src", "net", "tests"))
                files = {
                    "lib.rs": "mod net;\n#[cfg(test)]\nmod tests;\nmod io;\n",
                    "tests.rs": "use std::fs;\n",
                    "net.rs": "#[cfg(test)]\nmod tests;\npub fn f() {}\n",
                    "net/tests/mod.rs": "use tokio;\n",
                    "io.rs": "use std::fs;\n\nuse std::process;\n",
                }
                for name, text in files.items():
                    with open(os.path.join(crate, "src", name), "w") as fh:
                        fh.write(text)
                saved = dict(IO_EXEMPT)
                try:
                    IO_EXEMPT.clear()
                    IO_EXEMPT[("c", "src/io.rs")] = {"std::fs": "why", "OS randomness": "why"}
                    errors = scan_crate("c", crate)
                finally:
                    IO_EXEMPT.clear()
                    IO_EXEMPT.update(saved)
            self.assertEqual(len(errors), 2, errors)
            self.assertTrue(errors[0].endswith("src/io.rs:3: std::process in c, a sans-IO crate"), errors)
            self.assertIn("src/io.rs use OS randomness, which it no longer does", errors[1])

        def test_a_normal_edge_into_a_dev_only_crate_fails(self):
            self.assertEqual(dev_only_errors({("weft-x", "weft-proto")}), [])
            self.assertEqual(
                dev_only_errors({("weft-x", DEV_ONLY[0])}),
                [f"weft-x depends on {DEV_ONLY[0]}, which is dev-only: make it a dev-dependency"],
            )

        def test_edge_list_parses_back(self):
            edges = {("weft-a", "weft-b"), ("weft-a", "weft-c"), ("weft-long-name", "weft-b")}
            self.assertEqual(parse_edges(edge_list(edges)), edges)

        def test_diagram_layers_and_round_trip(self):
            text = diagram(["a", "b", "c"], {("a", "b"), ("b", "c"), ("a", "c")}, {("c", "a")})
            lines = text.splitlines()
            body = lines[lines.index("") + 1 :]
            self.assertTrue(body[0].startswith(" 2  a") and body[0].endswith("-> b c"))
            self.assertTrue(body[1].startswith(" 1  b") and body[1].endswith("-> c"))
            self.assertEqual(body[2].rstrip(), " 0  c")
            self.assertIn("    c  -> a", lines)
            doc = f"x\n{DIAGRAM_BEGIN} -->\n```text\n{text}```\n{DIAGRAM_END}\ny\n"
            self.assertEqual(documented_diagram(doc), text)

    result = unittest.TextTestRunner(verbosity=0).run(unittest.defaultTestLoader.loadTestsFromTestCase(T))
    return result.wasSuccessful()


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if sys.argv[1:] == ["--self-test"]:
        return 0 if self_test() else 1
    if sys.argv[1:] in (["--diagram"], ["--edges"]):
        try:
            pkgs, normal, dev = workspace()
        except CargoFailed as e:
            print(f"check-architecture: {e}", file=sys.stderr)
            return 1
        if sys.argv[1] == "--diagram":
            sys.stdout.write(diagram(sorted(pkgs), normal, dev))
        else:
            sys.stdout.write(f'ALLOWED_EDGES = """\n{edge_list(normal)}"""\n\nDEV_EDGES = """\n{edge_list(dev)}"""\n')
        return 0
    if sys.argv[1:]:
        print(__doc__[__doc__.index("Usage:") :].rstrip(), file=sys.stderr)
        return 2
    try:
        errors = check()
    except CargoFailed as e:
        errors = [str(e)]
    for e in errors:
        print(f"check-architecture: {e}", file=sys.stderr)
    if errors:
        return 1
    print("check-architecture: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
