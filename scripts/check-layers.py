#!/usr/bin/env python3
"""Check the dependency edges between workspace crates against layers.toml.

Usage:
    scripts/check-layers.py                  check the workspace (runs `cargo metadata`)
    scripts/check-layers.py --metadata F     check a saved `cargo metadata` JSON (F or - for stdin)
    scripts/check-layers.py --self-test      check the rule engine against synthetic workspaces
    scripts/check-layers.py -v               also list every internal edge that was checked

Rules (see layers.toml for the data):
  * every workspace crate is listed in layers.toml, with a kind and an allow list;
  * a normal or build dependency on a workspace crate must be in the crate's `allow`;
  * a dev-dependency must be in the crate's `dev` list (default: `allow` plus every
    crate of kind "testing");
  * whatever the lists say: leaves depend on no project crate (dev-dependencies on
    testing crates excepted), libraries never depend on apps, apps never depend on
    other apps, and only dev-dependencies (or other testing crates) use testing crates.

Standard library only (tomllib needs Python 3.11). Exit status: 0 clean, 1 a rule is
broken, 2 the check itself could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass

if sys.version_info < (3, 11):
    sys.exit("check-layers: needs Python >= 3.11 (for tomllib); found " + sys.version.split()[0])

import tomllib  # noqa: E402  (after the version check on purpose)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("leaf", "library", "app", "testing")
ENTRY_KEYS = {"kind", "allow", "dev"}


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    allow: frozenset[str]
    dev: frozenset[str]


def fmt_list(names) -> str:
    return "[" + ", ".join(sorted(names)) + "]"


# --------------------------------------------------------------------- rules


def rule_violation(src: Spec, dst: Spec, dep_kind: str) -> str | None:
    """The kind rule an edge breaks, whatever the allow lists say; None when it breaks none."""
    if src.name == dst.name:
        return "a crate cannot depend on itself"
    if src.kind == "leaf" and not (dep_kind == "dev" and dst.kind == "testing"):
        return "leaf crates depend on no project crate (only dev-dependencies on testing crates)"
    if src.kind == "library" and dst.kind == "app":
        return "libraries never depend on apps"
    if src.kind == "app" and dst.kind == "app":
        return "apps never depend on other apps (run them as processes instead)"
    if dst.kind == "testing" and dep_kind != "dev" and src.kind != "testing":
        return "testing crates may only be dev-dependencies (test code must not reach a production build)"
    return None


def load_layers(doc: dict, source: str = "layers.toml") -> tuple[dict[str, Spec], list[str]]:
    """Parse and validate a layers document. Returns (specs, errors)."""
    errors: list[str] = []
    extra = set(doc) - {"crates"}
    if extra:
        errors.append(f"{source}: unknown top-level keys {fmt_list(extra)} (only [crates.<name>] tables)")
    crates = doc.get("crates")
    if not isinstance(crates, dict) or not crates:
        errors.append(f"{source}: no [crates.<name>] tables found")
        return {}, errors

    raw: dict[str, tuple[str, list[str], list[str] | None]] = {}
    for name, entry in crates.items():
        where = f"{source}: [crates.{name}]"
        if not isinstance(entry, dict):
            errors.append(f"{where}: must be a table with `kind` and `allow`")
            continue
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            errors.append(f"{where}: unknown keys {fmt_list(unknown)} (allowed: {fmt_list(ENTRY_KEYS)})")
        kind = entry.get("kind")
        if kind not in KINDS:
            errors.append(f"{where}: kind = {kind!r}, expected one of {', '.join(KINDS)}")
            continue
        lists: dict[str, list[str] | None] = {}
        for key in ("allow", "dev"):
            value = entry.get(key)
            if value is None:
                if key == "allow":
                    errors.append(f"{where}: missing `allow = [...]` (use `allow = []` for none)")
                    value = []
            elif not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                errors.append(f"{where}: `{key}` must be a list of crate names")
                value = []
            lists[key] = value
        raw[name] = (kind, lists["allow"] or [], lists["dev"])

    testing = {n for n, (k, _, _) in raw.items() if k == "testing"}
    specs: dict[str, Spec] = {}
    for name, (kind, allow, dev) in raw.items():
        dev_set = set(dev) if dev is not None else (set(allow) | testing) - {name}
        specs[name] = Spec(name, kind, frozenset(allow), frozenset(dev_set))

    # The lists themselves must name known crates and respect the kind rules.
    for name, spec in specs.items():
        explicit_dev = raw[name][2] is not None
        for key, targets, dep_kind in (("allow", spec.allow, "normal"), ("dev", spec.dev, "dev")):
            if key == "dev" and not explicit_dev:
                targets = spec.dev - spec.allow  # only the defaults added; `allow` was checked already
            for target in sorted(targets):
                if target not in specs:
                    if target not in raw:
                        errors.append(f"{source}: crates.{name}.{key} names {target!r}, which has no [crates.{target}] entry")
                    continue
                why = rule_violation(spec, specs[target], dep_kind)
                if why:
                    origin = f"crates.{name}.{key}" if key == "allow" or explicit_dev else f"the default dev list of {name}"
                    errors.append(f"{source}: {origin} allows {name} -> {target}, but {why}")
    return specs, errors


def check(metadata: dict, specs: dict[str, Spec], verbose: bool = False) -> tuple[list[str], list[str]]:
    """Check a `cargo metadata --no-deps` document. Returns (errors, report lines)."""
    errors: list[str] = []
    report: list[str] = []
    members = set(metadata.get("workspace_members") or [])
    packages = [p for p in metadata.get("packages", []) if p.get("id") in members]
    names = {p["name"] for p in packages}

    for pkg in sorted(packages, key=lambda p: p["name"]):
        if pkg["name"] not in specs:
            errors.append(
                f"crate {pkg['name']!r} ({pkg.get('manifest_path', '?')}) is not listed in layers.toml: "
                f"add [crates.{pkg['name']}] with its kind and allow list"
            )

    edges = 0
    seen: set[tuple[str, str, str]] = set()
    for pkg in sorted(packages, key=lambda p: p["name"]):
        src = specs.get(pkg["name"])
        for dep in pkg.get("dependencies", []):
            if dep.get("source") is not None:
                continue  # registry or git crate, even if it shares a name with one of ours
            target = dep["name"]
            if target not in names:
                report.append(f"note: {pkg['name']} has a path dependency on {target!r} outside the workspace (not checked)")
                continue
            if target == pkg["name"]:
                continue  # a crate dev-depending on itself to turn on features
            dep_kind = dep.get("kind") or "normal"
            key = (pkg["name"], target, dep_kind)
            if key in seen:
                continue
            seen.add(key)
            edges += 1
            if verbose:
                report.append(f"edge: {pkg['name']} -> {target} ({dep_kind})")
            dst = specs.get(target)
            if src is None or dst is None:
                continue  # already reported as unlisted
            edge = f"{src.name} ({src.kind}) -> {dst.name} ({dst.kind}) as a {dep_kind} dependency"
            why = rule_violation(src, dst, dep_kind)
            if why:
                errors.append(f"forbidden edge {edge}: {why}")
                continue
            list_key = "dev" if dep_kind == "dev" else "allow"
            allowed = src.dev if dep_kind == "dev" else src.allow
            if target not in allowed:
                errors.append(
                    f"forbidden edge {edge}: {target!r} is not in crates.{src.name}.{list_key} = {fmt_list(allowed)} "
                    f"in layers.toml; if the edge is intended, add it there and update the layering in ARCHITECTURE.md"
                )

    planned = sorted(set(specs) - names)
    report.append(
        f"check-layers: {len(packages)} workspace crates, {edges} internal edges checked against layers.toml"
        + (f" (listed but not in the workspace yet: {', '.join(planned)})" if planned else "")
    )
    return errors, report


# ---------------------------------------------------------------- self-test


def synthetic_metadata(crates: dict[str, list[tuple[str, str | None]]], registry: dict[str, list[str]] | None = None) -> dict:
    """A minimal `cargo metadata --no-deps` document: crate -> [(dep, kind)]."""
    registry = registry or {}
    packages = []
    for name, deps in crates.items():
        dependencies = [
            {"name": d, "source": None, "kind": k, "path": f"/ws/{d}", "rename": None} for d, k in deps
        ] + [
            {"name": d, "source": "registry+https://github.com/rust-lang/crates.io-index", "kind": None, "rename": None}
            for d in registry.get(name, [])
        ]
        packages.append(
            {"name": name, "id": f"path+file:///ws/{name}#0.1.0", "manifest_path": f"/ws/{name}/Cargo.toml", "dependencies": dependencies}
        )
    return {"packages": packages, "workspace_members": [p["id"] for p in packages], "version": 1}


def self_test(layers_path: str) -> int:
    with open(layers_path, "rb") as f:
        real_doc = tomllib.load(f)
    real, real_errors = load_layers(real_doc, os.path.basename(layers_path))

    today = {"proto": [], "hbone": [], "meshcore": [], "ztunnel": [], "waypoint": [], "cni": []}

    def ws(**extra):
        crates = {k: list(v) for k, v in today.items()}
        for name, deps in extra.items():
            crates[name.replace("_", "-")] = deps
        return crates

    # (name, layers doc or None for the real file, crates, registry deps, expected substrings or [] for clean)
    cases = [
        ("the real layers.toml is consistent", None, None, None, []),
        ("today's workspace passes", None, ws(), None, []),
        ("allowed app -> library/leaf edges pass", None,
         ws(identity=[("proto", None), ("hbone", None)], ztunnel=[("identity", None), ("hbone", None), ("proto", "build")]), None, []),
        ("app -> app is caught", None, ws(ztunnel=[("waypoint", None)]), None,
         ["forbidden edge ztunnel (app) -> waypoint (app)", "apps never depend on other apps"]),
        ("app -> app as a build dependency is caught", None, ws(ztunnel=[("waypoint", "build")]), None,
         ["ztunnel (app) -> waypoint (app) as a build dependency"]),
        ("app -> app as a dev dependency is caught", None, ws(cni=[("ztunnel", "dev")]), None,
         ["cni (app) -> ztunnel (app) as a dev dependency", "apps never depend on other apps"]),
        ("an edge missing from the allow list is caught", None, ws(cni=[("hbone", None)]), None,
         ["forbidden edge cni (app) -> hbone (leaf)", "crates.cni.allow = [meshcore, proto]"]),
        ("leaf -> leaf is caught", None, ws(hbone=[("proto", None)]), None,
         ["hbone (leaf) -> proto (leaf)", "leaf crates depend on no project crate"]),
        ("library -> app is caught", None, ws(identity=[("ztunnel", None)]), None,
         ["identity (library) -> ztunnel (app)", "libraries never depend on apps"]),
        ("a normal dependency on a testing crate is caught", None,
         ws(mesh_testing=[("hbone", None)], ztunnel=[("mesh-testing", None)]), None,
         ["ztunnel (app) -> mesh-testing (testing) as a normal dependency", "only be dev-dependencies"]),
        ("dev-dependencies on testing crates pass, also from leaves", None,
         ws(mesh_testing=[("hbone", None)], ztunnel=[("mesh-testing", "dev")], hbone=[("mesh-testing", "dev")]), None, []),
        ("mesh-tests may use meshlab but not ztunnel", None,
         ws(meshlab=[("proto", None)], mesh_tests=[("meshlab", None), ("ztunnel", None)]), None,
         ["mesh-tests (testing) -> ztunnel (app)", "crates.mesh-tests.allow"]),
        ("an unlisted workspace crate is caught", None, ws(frobnicator=[]), None,
         ["crate 'frobnicator'", "not listed in layers.toml"]),
        ("registry crates sharing a name with ours are ignored", None, ws(), {"cni": ["state", "waypoint"]}, []),
        ("a crate may dev-depend on itself", None, ws(hbone=[("hbone", "dev")]), None, []),
        # synthetic layers documents: the file itself is validated
        ("an allow list breaking a kind rule is caught",
         {"crates": {"a": {"kind": "library", "allow": ["b"]}, "b": {"kind": "app", "allow": []}}}, None, None,
         ["crates.a.allow allows a -> b, but libraries never depend on apps"]),
        ("a leaf with an allow list is caught",
         {"crates": {"a": {"kind": "leaf", "allow": ["b"]}, "b": {"kind": "leaf", "allow": []}}}, None, None,
         ["crates.a.allow allows a -> b, but leaf crates depend on no project crate"]),
        ("unknown kinds, keys and crate names are caught",
         {"crates": {"a": {"kind": "service", "allow": []}, "b": {"kind": "app", "allow": ["nope"], "deps": []}}}, None, None,
         ["kind = 'service'", "unknown keys [deps]", "names 'nope'"]),
        ("an explicit dev list replaces the default",
         {"crates": {"a": {"kind": "app", "allow": [], "dev": ["c"]}, "b": {"kind": "testing", "allow": []},
                     "c": {"kind": "leaf", "allow": []}}},
         {"a": [("b", "dev"), ("c", "dev")], "b": [], "c": []}, None,
         ["a (app) -> b (testing) as a dev dependency", "crates.a.dev = [c]"]),
    ]

    failures = 0
    for name, doc, crates, registry, expected in cases:
        if doc is None:
            specs, errors = real, list(real_errors)
        else:
            specs, errors = load_layers(doc, "synthetic.toml")
        if crates is not None:
            errors += check(synthetic_metadata(crates, registry), specs)[0]
        text = "\n".join(errors)
        if expected:
            ok = bool(errors) and all(e in text for e in expected)
        else:
            ok = not errors
        if not ok:
            failures += 1
            print(f"self-test FAILED: {name}\n  expected: {expected or 'no errors'}\n  got:", file=sys.stderr)
            for e in errors or ["(no errors)"]:
                print(f"    {e}", file=sys.stderr)
    if failures:
        print(f"check-layers self-test: {failures} of {len(cases)} cases failed", file=sys.stderr)
        return 1
    print(f"check-layers self-test: {len(cases)} cases passed")
    return 0


# ---------------------------------------------------------------------- main


def cargo_metadata() -> dict:
    cmd = [os.environ.get("CARGO", "cargo"), "metadata", "--format-version", "1", "--no-deps",
           "--manifest-path", os.path.join(ROOT, "Cargo.toml")]
    try:
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    except FileNotFoundError:
        print(f"check-layers: cannot run {cmd[0]!r}: is the Rust toolchain on PATH?", file=sys.stderr)
        sys.exit(2)
    except subprocess.CalledProcessError as e:
        print(f"check-layers: `{' '.join(cmd)}` failed with status {e.returncode}", file=sys.stderr)
        sys.exit(2)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description="Check workspace crate edges against layers.toml.")
    parser.add_argument("--layers", default=os.path.join(ROOT, "layers.toml"), help="the layers file (default: layers.toml)")
    parser.add_argument("--metadata", help="read `cargo metadata` JSON from this file ('-' for stdin) instead of running cargo")
    parser.add_argument("--self-test", action="store_true", help="test the rule engine on synthetic workspaces")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every internal edge checked")
    args = parser.parse_args()

    if args.self_test:
        return self_test(args.layers)

    try:
        with open(args.layers, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        print(f"check-layers: {args.layers} not found", file=sys.stderr)
        return 2
    except tomllib.TOMLDecodeError as e:
        print(f"check-layers: {args.layers} is not valid TOML: {e}", file=sys.stderr)
        return 2
    specs, errors = load_layers(doc, os.path.basename(args.layers))

    if args.metadata == "-":
        metadata = json.load(sys.stdin)
    elif args.metadata:
        with open(args.metadata) as f:
            metadata = json.load(f)
    else:
        metadata = cargo_metadata()

    check_errors, report = check(metadata, specs, args.verbose)
    errors += check_errors
    for line in report:
        print(line)
    if errors:
        print(f"check-layers: {len(errors)} layering violation(s):", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        print("The layering rule is in layers.toml (data) and ARCHITECTURE.md (why).", file=sys.stderr)
        return 1
    print("check-layers: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
