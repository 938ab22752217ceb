#!/usr/bin/env python3
"""Check the Helm charts under charts/ offline (no cluster, no helm binary).

`make charts-check` runs `check`; it needs the .venv of `make setup` (helm-python-sdk: real Helm
v4 as a library; kubernetes-validate: offline Kubernetes JSON schemas). For every chart:

  1. `helm lint` (strict: warnings fail) with the default values and with each ci/*.yaml;
  2. render with the defaults and with each charts/<chart>/ci/*.yaml;
  3. validate every rendered object strictly (unknown fields fail) against the newest Kubernetes
     version kubernetes-validate knows, and check the chart's invariants (checks.py);
  4. render with each charts/<chart>/ci-invalid/*.yaml and require the render to FAIL (the values
     schema rejects typos and wrong types, the templates reject reserved env overrides);
  5. write the objects rendered with the defaults to target/charts/<chart>.json.

`render` prints the rendered objects of one chart as JSON (used by ztunnel/tests/chart_contract.rs):

    .venv/bin/python scripts/charts-check.py render ztunnel [--values FILE]...
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "charts"
OUT = ROOT / "target" / "charts"
RELEASE_NAMESPACE = "istio-system"

try:
    import helm_python
    import kubernetes_validate
    import kubernetes_validate.utils as kv_utils
    import yaml
except ImportError as e:  # pragma: no cover - environment problem, explained to the operator
    sys.exit(
        f"charts-check: cannot import {e.name}: run `make setup` (installs scripts/requirements.txt "
        f"into {ROOT / '.venv'}) and run this script with {ROOT / '.venv/bin/python'}"
    )

sys.path.insert(0, str(Path(__file__).resolve().parent))
import charts_invariants  # noqa: E402  (needs the sys.path entry above)


def k8s_version() -> str:
    """The newest Kubernetes minor version the installed kubernetes-validate has schemas for."""
    return kv_utils.major_minor(kv_utils.latest_version())


def chart_dirs() -> list[Path]:
    return sorted(p.parent for p in CHARTS.glob("*/Chart.yaml"))


def load_values(path: Path | None) -> dict:
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a values file must be a YAML mapping")
    return data


def merge(base: dict, over: dict) -> dict:
    """Deep-merge `over` into a copy of `base` (what several `-f` files do in helm)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(chart_dir: Path, values: dict) -> list[dict]:
    """Renders the chart; returns its Kubernetes objects in template order (NOTES.txt skipped)."""
    chart = helm_python.Chart.load(str(chart_dir))
    manifests = chart.render(values=values, name=chart_dir.name, namespace=RELEASE_NAMESPACE)
    objects = []
    for template in sorted(manifests):
        if not template.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(manifests[template]):
            if doc:
                objects.append({"template": template, "object": doc})
    return objects


@dataclass
class Report:
    results: list[tuple[str, str, bool, str]] = field(default_factory=list)

    def add(self, chart: str, what: str, ok: bool, detail: str = "") -> None:
        self.results.append((chart, what, ok, detail))
        mark = "ok  " if ok else "FAIL"
        print(f"  [{mark}] {what}" + (f": {detail}" if detail and not ok else ""))
        if ok and detail:
            print(f"         {detail}")

    @property
    def failures(self) -> int:
        return sum(1 for r in self.results if not r[2])


def validate_objects(objects: list[dict], version: str) -> list[str]:
    errors = []
    seen = set()
    for item in objects:
        obj = item["object"]
        ident = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if ident in seen:
            errors.append(f"{ident}: rendered twice")
        seen.add(ident)
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.absolute_path)
            errors.append(f"{ident} ({item['template']}) at {path or '<root>'}: {e.message}")
        except Exception as e:  # noqa: BLE001 - unknown kinds and schema problems are failures too
            errors.append(f"{ident} ({item['template']}): {type(e).__name__}: {e}")
    return errors


def self_test(version: str) -> list[str]:
    """Guards against a check that cannot fail: a typo and a wrong type must be caught."""
    problems = []
    bad_objects = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}, "automount": 1},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": 1}},
    ]
    for obj in bad_objects:
        if not validate_objects([{"template": "self-test", "object": obj}], version):
            problems.append(f"kubernetes-validate accepted an invalid object: {obj}")
    return problems


MUTATIONS = {
    "an extra capability": lambda c: c["securityContext"]["capabilities"]["add"].append("NET_BIND_SERVICE"),
    "a changed readiness port": lambda c: c["readinessProbe"]["httpGet"].update(port=1),
    "a lost volume mount": lambda c: c["volumeMounts"].pop(),
}


def mutation_self_test(invariants, objects: list[dict], values: dict) -> list[str]:
    """Breaks the rendered DaemonSet in known ways; the invariants must notice each one."""
    missed = []
    pod_mutations = {
        "a missing dataplane-mode opt-out label": lambda p: p["metadata"]["labels"].pop("istio.io/dataplane-mode"),
        "a missing NoExecute toleration": lambda p: p["spec"].update(tolerations=p["spec"]["tolerations"][:1]),
    }
    for what, mutate in [*MUTATIONS.items(), *pod_mutations.items()]:
        broken = copy.deepcopy(objects)
        ds = next(o for o in broken if o["kind"] == "DaemonSet")
        pod = ds["spec"]["template"]
        if what in MUTATIONS:
            mutate(pod["spec"]["containers"][0])
        else:
            mutate(pod)
        if not invariants(broken, values):
            missed.append(f"not caught: {what}")
    return missed


def check_chart(chart_dir: Path, version: str, report: Report) -> None:
    name = chart_dir.name
    print(f"\n== chart {name} ({chart_dir.relative_to(ROOT)})")
    cases = [("defaults", None)] + [
        (f"ci/{p.name}", p) for p in sorted((chart_dir / "ci").glob("*.yaml"))
    ]
    invariants = charts_invariants.CHECKS.get(name)
    if invariants is None:
        report.add(name, "invariants", False, f"no invariant checks for chart {name!r} in charts_invariants.py")

    for label, path in cases:
        values = load_values(path)
        lint = helm_python.lint(str(chart_dir), values, strict=True, namespace=RELEASE_NAMESPACE)
        lint_errors = list(lint.get("errors") or []) + [
            f"{m['path']}: {m['error']}" for m in lint.get("messages") or [] if m["severity"] >= 2
        ]
        report.add(name, f"helm lint --strict ({label})", not lint_errors, "; ".join(lint_errors))

        try:
            objects = render(chart_dir, values)
        except helm_python.HelmError as e:
            report.add(name, f"render ({label})", False, f"{type(e).__name__}: {e}")
            continue
        kinds = ", ".join(f"{o['object']['kind']}/{o['object']['metadata']['name']}" for o in objects)
        report.add(name, f"render ({label})", bool(objects), kinds or "rendered nothing")

        errors = validate_objects(objects, version)
        report.add(
            name,
            f"kubernetes {version} strict schema ({label}, {len(objects)} objects)",
            not errors,
            "; ".join(errors),
        )
        if invariants is not None:
            problems = invariants([o["object"] for o in objects], effective_values(chart_dir, values))
            report.add(name, f"invariants ({label})", not problems, "; ".join(problems))

        if path is None and invariants is not None:
            missed = mutation_self_test(invariants, [o["object"] for o in objects], effective_values(chart_dir, values))
            report.add(name, "invariants catch broken manifests (mutation self-test)", not missed, "; ".join(missed))
        if path is None:
            OUT.mkdir(parents=True, exist_ok=True)
            out = OUT / f"{name}.json"
            out.write_text(json.dumps([o["object"] for o in objects], indent=2) + "\n")

    repo = effective_values(chart_dir, {})["image"]["repository"]
    dockerfile = ROOT / "images" / repo / "Dockerfile"
    report.add(name, f"default image {repo} is built by images/{repo}/Dockerfile", dockerfile.is_file(),
               "" if dockerfile.is_file() else f"{dockerfile.relative_to(ROOT)} missing: `make images` would not build it")

    invalid = sorted((chart_dir / "ci-invalid").glob("*.yaml"))
    report.add(name, "ci-invalid/ has cases", len(invalid) >= 2, "" if len(invalid) >= 2 else "need a typo and a wrong type case")
    for path in invalid:
        try:
            render(chart_dir, load_values(path))
        except helm_python.HelmError as e:
            first = " ".join(str(e).split())[:160]
            report.add(name, f"rejected ci-invalid/{path.name}", True, first)
        else:
            report.add(name, f"rejected ci-invalid/{path.name}", False, "the render SUCCEEDED: the schema/templates let a bad value through")


def effective_values(chart_dir: Path, values: dict) -> dict:
    """The chart's defaults coalesced with `values`, as Helm does it for an install."""
    return helm_python.Chart.load(str(chart_dir)).merge_values(values)


def cmd_check(_: argparse.Namespace) -> int:
    version = k8s_version()
    print(f"charts-check: helm SDK {helm_python.helm_sdk_version()}, Kubernetes schemas {version} (strict)")
    report = Report()
    for problem in self_test(version):
        report.add("self-test", "validator self-test", False, problem)
    charts = chart_dirs()
    if not charts:
        report.add("-", "charts found", False, f"no charts under {CHARTS}")
    for chart_dir in charts:
        check_chart(chart_dir, version, report)

    print("\n== summary")
    for chart in sorted({r[0] for r in report.results}):
        rows = [r for r in report.results if r[0] == chart]
        bad = [r for r in rows if not r[2]]
        print(f"  {chart:10} {len(rows) - len(bad)}/{len(rows)} checks passed")
        for _, what, _, detail in bad:
            print(f"    FAIL {what}: {detail}")
    if report.failures:
        print(f"charts-check: {report.failures} check(s) FAILED", file=sys.stderr)
        return 1
    print(f"charts-check: all {len(report.results)} checks passed; defaults written to {OUT.relative_to(ROOT)}/")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    chart_dir = CHARTS / args.chart
    if not (chart_dir / "Chart.yaml").is_file():
        print(f"charts-check: no chart {args.chart!r} under {CHARTS}", file=sys.stderr)
        return 2
    values: dict = {}
    for f in args.values:
        values = merge(values, load_values(Path(f)))
    try:
        objects = render(chart_dir, values)
    except helm_python.HelmError as e:
        print(f"charts-check: render of {args.chart} failed: {e}", file=sys.stderr)
        return 1
    json.dump([o["object"] for o in objects], sys.stdout, indent=2)
    print()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("check", help="lint, render, validate every chart (the default)")
    r = sub.add_parser("render", help="print one chart's rendered objects as JSON")
    r.add_argument("chart", help="directory name under charts/, e.g. ztunnel")
    r.add_argument("--values", "-f", action="append", default=[], help="values file (repeatable)")
    args = parser.parse_args()
    if args.command == "render":
        return cmd_render(args)
    return cmd_check(args)


if __name__ == "__main__":
    sys.exit(main())
