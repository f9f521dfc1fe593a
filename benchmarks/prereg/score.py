"""Step 3 of the pre-registered validation: score bscrit's registered answers against the truth.

Reads only committed files (``registered/*.json``, ``truth/*.jsonl``) and writes
``results/score.md`` and ``results/score.json``. The scoring rules below were committed with the
registration, before any truth existed:

- **Truth per point.** SGD: the rule fails at B' when the mean test error over the seeds exceeds
  1.2 × the best mean of the sweep. LM: D = mean held-out loss at κ·B0 − at B0; fails when
  D > max(tol, 2·SE(D)); primary tol = 0.01 nats/token (Merrill et al. 2025), secondary 0.10 × the
  mean at B0 (bscrit confirm's default δ). A κ without valid hyperparameters under a rule
  ("undefined") is not scored.
- **check** (``settings.COUNTING``): approve = exit 0 or 6; refuse = exit 1; undecided = exit 5
  (second reading, ``--gate point``: undecided counts as approve).
- **false-OK rate** = P(the rule fails | check approved), pooled over every scored point of every
  setting (primary criteria), with a Wilson 95% interval; **false-refusal rate** = P(the rule holds
  | check refused). Also by truth: P(approved | fails) and P(refused | holds).
- **predict**: max of the recommended range / the observed boundary (the last B' of the grid,
  from B0 upward, before the first failure).
- **svag / confirm**: agree, disagree, inconclusive per point.

``--verify`` (CI): recompute and compare with the committed ``results/score.json``, and check in
git that every registration file was committed before its truth file and never changed since.

    python benchmarks/prereg/score.py            # writes results/score.{md,json}
    python benchmarks/prereg/score.py --verify   # exit 1 on a mismatch or a broken history
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REGISTERED, TRUTH, RESULTS = HERE / "registered", HERE / "truth", HERE / "results"
PRIMARY_LM_TOL = "abs_0.01"
APPROVE, REFUSE, UNDECIDED = "approve", "refuse", "undecided"


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    """Wilson score interval of k successes out of n (None when n = 0)."""
    if n == 0:
        return None, None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def check_answer(code: int, gate_point: bool = False) -> str:
    if code in (0, 6):
        return APPROVE
    if code == 5:
        return APPROVE if gate_point else UNDECIDED
    if code == 1:
        return REFUSE
    return f"error {code}"


def _mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("inf")
    return m, se


def sgd_truth(st: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per B: mean test error; fails iff mean > 1.2 × the best mean."""
    by_b: dict[int, list[float]] = {}
    for r in rows:
        by_b.setdefault(int(r["B"]), []).append(float(r["test_error"]))
    means = {b: statistics.fmean(v) for b, v in sorted(by_b.items())}
    best = min(means.values())
    pts = {b: {"mean_test_error": m, "seeds": len(by_b[b]), "fails": m > 1.2 * best}
           for b, m in means.items()}  # fmt: skip
    return {"best": best, "points": {"sgd": pts}}


def lm_truth(st: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rule and κ: D, SE(D) and the verdict under each tolerance."""
    base = [float(r["heldout_loss"]) for r in rows if r["rule"] == "base"]
    mb, seb = _mean_se(base)
    pts: dict[str, dict[int, dict[str, Any]]] = {}
    for rule in st["rules"]:
        pts[rule] = {}
        for k in st["kappas"]:
            rs = [r for r in rows if r["rule"] == rule and r["kappa"] == k]
            b = k * st["B0"]
            if rs and all("undefined" in r for r in rs):
                pts[rule][b] = {"undefined": rs[0]["undefined"]}
                continue
            mk, sek = _mean_se([float(r["heldout_loss"]) for r in rs])
            d, se = mk - mb, math.sqrt(sek**2 + seb**2)
            tols = {"abs_0.01": 0.01, "rel_0.10": 0.10 * mb}
            pts[rule][b] = {"D": d, "se": se, "mean": mk, "seeds": len(rs)} | {
                f"fails_{t}": d > max(v, 2 * se) for t, v in tols.items()}  # fmt: skip
    return {"base_mean": mb, "base_se": seb, "points": pts}


def fails(p: dict[str, Any], tol: str = PRIMARY_LM_TOL) -> bool | None:
    if "undefined" in p:
        return None
    return p["fails"] if "fails" in p else p[f"fails_{tol}"]


def boundary(pts: dict[int, dict[str, Any]], b0: int, tol: str = PRIMARY_LM_TOL) -> int | None:
    """The last B' (from B0 upward) before the first failure (or undefined point)."""
    last = b0
    for b in sorted(pts):
        if b <= b0:
            continue
        if fails(pts[b], tol) is not False:
            return last
        last = b
    return None  # no failure on the grid: the boundary is above it


def _verdict_vs(code: str | None, truth: bool) -> str:
    if code in ("holds", "sde_holds"):
        return "agree" if not truth else "disagree"
    if code in ("fails", "sde_fails"):
        return "agree" if truth else "disagree"
    return "inconclusive" if code else "missing"


def score_setting(reg: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    st = reg["setting"]
    sgd = st["kind"] == "sgd"
    tr = sgd_truth(st, rows) if sgd else lm_truth(st, rows)
    a = reg["answers"]
    points = []
    for c in a["check"]:
        rule, b = c["rule"], int(c["B"])
        p = tr["points"][rule].get(b)
        if p is None:
            continue
        row = {"setting": st["name"], "rule": rule, "B": b, "check_exit": c["exit"],
               "check": check_answer(c["exit"]), "check_gate_point": check_answer(c["exit"], True),
               "truth_fails": fails(p), "truth": p}  # fmt: skip
        if not sgd:
            row["truth_fails_rel"] = fails(p, "rel_0.10")
        for tool in ("confirm", "svag"):
            got = [x for x in a.get(tool, []) if int(x["B"]) == b]
            if got and row["truth_fails"] is not None:
                row[tool] = got[0]["verdict"]
                row[f"{tool}_vs_truth"] = _verdict_vs(got[0]["verdict"], row["truth_fails"])
        points.append(row)
    pred = {}
    for rule, p in a["predict"].items():
        rec = (p.get("json") or {}).get("recommended") or {}
        bd = boundary(tr["points"][rule], st["B0"])
        pred[rule] = {"max": rec.get("max"), "observed_boundary": bd,
                      "ratio": rec["max"] / bd if rec.get("max") and bd else None}  # fmt: skip
    sweep_s = sum(float(r.get("seconds", 0.0)) for r in rows)
    tools_s = {
        t: sum(float(x.get("seconds", 0.0)) for x in a.get(t, [])) for t in ("confirm", "svag")
    }
    tools_s["measure"] = float(a["measure"]["seconds"])
    cost = {"sweep_s": sweep_s} | {
        f"{t}_fraction": (s / sweep_s if sweep_s else None) for t, s in tools_s.items()
    }
    return {"setting": st["name"], "kind": st["kind"], "truth": tr, "points": points,
            "predict": pred, "cost": cost}  # fmt: skip


def rates(points: list[dict[str, Any]], answer: str = "check", truth: str = "truth_fails") -> dict:
    """Confusion counts and the false-OK / false-refusal rates with Wilson intervals."""
    scored = [p for p in points if p[truth] is not None]
    count = lambda a, f: sum(1 for p in scored if p[answer] == a and p[truth] == f)  # noqa: E731
    c = {f"{a}_{'fails' if f else 'holds'}": count(a, f)
         for a in (APPROVE, REFUSE, UNDECIDED) for f in (True, False)}  # fmt: skip
    n_app = c["approve_fails"] + c["approve_holds"]
    n_ref = c["refuse_fails"] + c["refuse_holds"]
    n_fail = sum(1 for p in scored if p[truth])
    n_hold = len(scored) - n_fail
    r = lambda k, n: {"k": k, "n": n, "rate": k / n if n else None, "ci95": wilson(k, n)}  # noqa: E731
    return {"counts": c, "points": len(scored),
            "false_ok": r(c["approve_fails"], n_app),
            "false_refusal": r(c["refuse_holds"], n_ref),
            "approved_given_fails": r(c["approve_fails"], n_fail),
            "refused_given_holds": r(c["refuse_holds"], n_hold)}  # fmt: skip


def expected_runs(st: dict[str, Any]) -> int:
    """The number of runs of a setting's complete truth (``truth.jobs``)."""
    if st["kind"] == "sgd":
        return (1 + len(st["grid"])) * len(st["seeds"])
    return len(st["seeds"]) * (1 + len(st["rules"]) * len(st["kappas"]))


def load(registered: Path = REGISTERED, truth: Path = TRUTH) -> list[dict[str, Any]]:
    out = []
    for f in sorted(registered.glob("*.json")):
        t = truth / f"{f.stem}.jsonl"
        if not t.exists():
            continue
        rows = [json.loads(x) for x in t.read_text().splitlines() if x.strip()]
        reg = json.loads(f.read_text())
        want = expected_runs(reg["setting"])
        if len(rows) < want:
            print(f"prereg: {f.stem}: truth incomplete ({len(rows)} of {want} runs), not scored",
                  file=sys.stderr)  # fmt: skip
            continue
        out.append(score_setting(reg, rows))
    return out


def summary(settings: list[dict[str, Any]]) -> dict[str, Any]:
    pts = [p for s in settings for p in s["points"]]
    lm = [p for p in pts if "truth_fails_rel" in p]
    kinds = ("agree", "disagree", "inconclusive")
    agreement = {t: {v: sum(1 for p in pts if p.get(f"{t}_vs_truth") == v) for v in kinds}
                 for t in ("confirm", "svag")}  # fmt: skip
    return {"schema": "bscrit-prereg-score/1", "settings": settings, "agreement": agreement,
            "check": rates(pts), "check_gate_point": rates(pts, "check_gate_point"),
            "check_lm_rel_0.10": rates(lm, truth="truth_fails_rel")}  # fmt: skip


def git_history_problems(registered: Path = REGISTERED, truth: Path = TRUTH) -> list[str]:
    """Every registration committed once, in a commit before its truth file's first commit."""

    def commits(path: Path) -> list[str]:
        p = subprocess.run(["git", "log", "--format=%H", "--", str(path)],
                           capture_output=True, text=True, cwd=HERE)  # fmt: skip
        return p.stdout.split()

    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], capture_output=True,
                             text=True, cwd=HERE)  # fmt: skip
    if shallow.returncode != 0 or shallow.stdout.strip() != "false":
        print("prereg: no full git history here; the order of the commits is not checked")
        return []
    problems = []
    for f in sorted(registered.glob("*.json")):
        reg = commits(f)
        t = truth / f"{f.stem}.jsonl"
        if not reg:
            problems.append(f"{f.name}: not committed")
            continue
        if len(reg) > 1:
            problems.append(f"{f.name}: changed after its registration ({len(reg)} commits)")
        tc = commits(t) if t.exists() else []
        if len(tc) > 1:
            problems.append(f"{t.name}: the truth changed after its commit ({len(tc)} commits)")
        if tc:
            anc = subprocess.run(["git", "merge-base", "--is-ancestor", reg[-1], tc[-1]], cwd=HERE)
            if anc.returncode != 0 or reg[-1] == tc[-1]:
                problems.append(f"{f.name}: its truth was not committed after the registration")
    return problems


def _pct(r: dict[str, Any]) -> str:
    if not r["n"]:
        return f"{r['k']}/0 (—)"
    lo, hi = r["ci95"]
    return f"{r['k']}/{r['n']} = {100 * r['rate']:.0f}% (95% CI {100 * lo:.0f}–{100 * hi:.0f}%)"


def _truth_cell(p: dict[str, Any]) -> str:
    t = p["truth"]
    if "undefined" in t:
        return "undefined (β' ≤ 0)"
    if "mean_test_error" in t:
        return f"err {t['mean_test_error']:.3f}"
    se = f"{t['se']:.4f}" if isinstance(t["se"], float) else t["se"]
    return f"D = {t['D']:+.4f} ± {se}"


def _fails_cell(f: bool | None) -> str:
    return "—" if f is None else ("**fails**" if f else "holds")


def markdown(s: dict[str, Any]) -> str:
    c = s["check"]
    names = ", ".join(x["setting"] for x in s["settings"])
    out = ["# Pre-registered validation: scores", "",
           "Generated by `python benchmarks/prereg/score.py` from the committed `registered/` and "
           "`truth/` files (evaluation data only; nothing here was used to choose a default).", "",
           f"**check's false-OK rate** (the rule fails where check approved, exit 0 or 6): "
           f"{_pct(c['false_ok'])}; false-refusal rate (the rule holds where check refused, "
           f"exit 1): {_pct(c['false_refusal'])}; undecided (exit 5): "
           f"{c['counts']['undecided_fails'] + c['counts']['undecided_holds']} of {c['points']} "
           f"points. Settings: {names}.", "",
           f"With `--gate point` (exit 5 read as approval): false-OK "
           f"{_pct(s['check_gate_point']['false_ok'])}. LM points under the relative criterion "
           f"(10% of the loss, confirm's default): false-OK "
           f"{_pct(s['check_lm_rel_0.10']['false_ok'])}.", "",
           "| counts | rule fails | rule holds |", "|---|---|---|"]  # fmt: skip
    for a in (APPROVE, REFUSE, UNDECIDED):
        out.append(f"| check {a} | {c['counts'][f'{a}_fails']} | {c['counts'][f'{a}_holds']} |")
    out += ["", "| tool vs truth | agree | disagree | inconclusive |", "|---|---|---|---|"]
    for t, v in s["agreement"].items():
        out.append(f"| {t} | {v['agree']} | {v['disagree']} | {v['inconclusive']} |")
    out += ["", "## Per setting", ""]
    for st in s["settings"]:
        out += [f"### {st['setting']}", "",
                "| B' | rule | truth | rule | check (exit) | confirm | svag |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        for p in st["points"]:
            out.append(f"| {p['B']} | {p['rule']} | {_truth_cell(p)} | "
                       f"{_fails_cell(p['truth_fails'])} | {p['check']} ({p['check_exit']}) | "
                       f"{p.get('confirm', '—')} | {p.get('svag', '—')} |")  # fmt: skip
        pr = "; ".join(f"{r}: max {v['max']:.0f}, observed boundary "
                       f"{v['observed_boundary'] if v['observed_boundary'] else '> grid'}"
                       + (f", ratio {v['ratio']:.2f}" if v["ratio"] else "")
                       for r, v in st["predict"].items() if v["max"])  # fmt: skip
        cost = ", ".join(f"{k.removesuffix('_fraction')} {100 * v:.0f}%"
                         for k, v in st["cost"].items()
                         if k.endswith("_fraction") and v)  # fmt: skip
        out += ["", f"predict's range: {pr}. Cost as a fraction of the truth's "
                f"{st['cost']['sweep_s'] / 60:.0f} min: {cost or '—'}.", ""]  # fmt: skip
    return "\n".join(out) + "\n"


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 6) if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {str(k): _round(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_round(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verify", action="store_true",
                    help="compare with the committed results; check the git history")  # fmt: skip
    ap.add_argument("--registered", type=Path, default=REGISTERED)
    ap.add_argument("--truth", type=Path, default=TRUTH)
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    s = _round(summary(load(a.registered, a.truth)))
    if a.verify:
        problems = git_history_problems(a.registered, a.truth)
        committed = json.loads((a.results / "score.json").read_text())
        if committed != s:
            problems.append("results/score.json differs from a fresh scoring")
        for p in problems:
            print("prereg:", p, file=sys.stderr)
        print(f"prereg: {len(s['settings'])} setting(s) rescored, "
              f"{'OK' if not problems else 'FAILED'}")  # fmt: skip
        return 1 if problems else 0
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / "score.json").write_text(json.dumps(s, indent=1) + "\n")
    (a.results / "score.md").write_text(markdown(s))
    print(markdown(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
