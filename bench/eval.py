"""``make eval``: how good are the labels, and what does each labelling strategy cost?

    .venv/bin/python bench/eval.py [--seeds 5] [--json]

Runs ``jobs/label-gold.toml`` (the 120-row gold sample, ``data/reviews-gold.csv``) against a
sandbox whose labelling agents know the sample's gold labels (``label_truth``) and are right per
call with a fixed probability: agent 301 0.92 on plain rows and 0.6 on hard ones (sarcasm, mixed,
negation), agent 302 0.98 and 0.9 at 15 times the price. Each strategy's output is measured with
``pipeline.evaluate`` against the ``gold`` column:

1. one vote of 301;
2. three votes of 301 (majority; ties go to the label listed first);
3. three votes, escalated to 302 below 0.5 (no two votes agree, or none parsed);
4. three votes, escalated to 302 below 0.67 (any disagreement);
5. one vote of 302 alone.

Strategies 1-4 run into one output, so one ledger: each reuses the votes the one before recorded,
and the comparison is paired (the escalating runs see exactly the votes of run 2). The cost of a
strategy is its output's ``cost`` column, which counts every call of every row, whether this run
paid for it or an earlier strategy did: what the strategy costs on its own. Each seed is a fresh
sandbox and ledger; the table shows the mean over ``--seeds`` seeds, and the range of accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import anyio

from pipeline import Credentials, Job, evaluate, open_provider, run_job
from pipeline.config import OutputConfig
from pipeline.sandbox import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parents[1]
KEY = "momo-sandbox-enterprise"
GOLD = ROOT / "data/reviews-gold.csv"
OUT = ROOT / "data/out/eval"

STRATEGIES: list[tuple[str, dict[str, Any], int]] = [  # name, [label] changes, agent
    ("1 vote (301)", {"votes": 1, "escalate": None}, 301),
    ("3 votes (301)", {"votes": 3, "escalate": None}, 301),
    ("3 votes, escalate < 0.5 to 302", {"votes": 3, "escalate": {"agent_id": 302, "below": 0.5}}, 301),
    ("3 votes, escalate < 0.67 to 302", {"votes": 3, "escalate": {"agent_id": 302, "below": 0.67}}, 301),
    ("1 vote (302 alone)", {"votes": 1, "escalate": None}, 302),
]


def strategy_job(base: Job, changes: dict[str, Any], agent: int, output: Path) -> Job:
    label = {k: v for k, v in {**(base.label_table or {}), **changes}.items() if v is not None}
    return base.with_overrides(label=label, output=OutputConfig(path=output),
                               provider=base.provider.model_copy(update={"agent_id": agent}))


async def one_seed(seed: int, base: Job) -> list[dict[str, Any]]:
    folder = OUT / f"seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    results = []
    with Sandbox(SandboxConfig(seed=seed, label_truth=GOLD)).running() as sb:
        for name, changes, agent in STRATEGIES:
            shared = folder / ("votes.parquet" if agent == 301 else "strong.parquet")  # one ledger for 1-4
            job = strategy_job(base, changes, agent, shared)
            provider = open_provider(job.provider, Credentials(KEY), base_url=sb.momo_url)
            try:
                report = await run_job(job, provider)
            finally:
                await provider.aclose()
            keep = folder / f"{len(results) + 1}.parquet"
            shutil.copyfile(shared, keep)
            ev = evaluate(keep, "gold", by=["case"])
            results.append({
                "strategy": name, "seed": seed, "accuracy": ev.accuracy, "kappa": ev.kappa, "macro_f1": ev.macro_f1,
                "coverage": ev.coverage, "cost": ev.cost, "tokens": ev.tokens, "rows": ev.rows,
                "escalated": (report.labels or {})["escalated"], "paid_this_run": round(report.stats.cost, 6),
                "by_case": {g.value: g.accuracy for g in ev.by["case"]},
                "by_agreement": {g.value: [g.rows, g.accuracy] for g in ev.by_agreement},
                "output": str(keep.relative_to(ROOT)),
            })
    return results


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for name, _, _ in STRATEGIES:
        mine = [r for r in runs if r["strategy"] == name]
        acc = [r["accuracy"] for r in mine]
        cases = sorted(mine[0]["by_case"])
        table.append({
            "strategy": name,
            "accuracy": round(statistics.mean(acc), 4), "accuracy_min": min(acc), "accuracy_max": max(acc),
            "kappa": round(statistics.mean(r["kappa"] or 0.0 for r in mine), 3),
            "macro_f1": round(statistics.mean(r["macro_f1"] for r in mine), 3),
            "escalated": round(statistics.mean(r["escalated"] for r in mine), 1),
            "cost": round(statistics.mean(r["cost"] for r in mine), 6),
            "tokens": round(statistics.mean(r["tokens"] for r in mine)),
            "by_case": {c: round(statistics.mean(r["by_case"][c] for r in mine), 3) for c in cases},
        })
    return table


def render(table: list[dict[str, Any]], runs: list[dict[str, Any]], seeds: int, rows: int) -> None:
    cheapest = table[0]["cost"] or 1.0
    print(f"gold sample: {rows} rows ({GOLD.relative_to(ROOT)}); mean over {seeds} sandbox seed(s); "
          "cost in CNY, the output's cost column (every call of every row)\n")
    head = (f"{'strategy':34} {'accuracy':>9} {'(range)':>13} {'kappa':>6} {'macro-F1':>8} {'escalated':>9} "
            f"{'cost':>9} {'× 1 vote':>8}")
    print(head)
    print("-" * len(head))
    for r in table:
        span = f"{r['accuracy_min']:.1%}-{r['accuracy_max']:.1%}"
        print(f"{r['strategy']:34} {r['accuracy']:>9.1%} {span:>13} {r['kappa']:>6.3f} {r['macro_f1']:>8.3f} "
              f"{r['escalated']:>9} {r['cost']:>9.5f} {r['cost'] / cheapest:>7.1f}x")
    cases = list(table[0]["by_case"])
    print("\naccuracy by case (mean over seeds)")
    print(f"{'strategy':34} " + " ".join(f"{c:>9}" for c in cases))
    for r in table:
        print(f"{r['strategy']:34} " + " ".join(f"{r['by_case'][c]:>9.1%}" for c in cases))
    votes = [r for r in runs if r["strategy"] == STRATEGIES[1][0]]
    levels = sorted({lv for r in votes for lv in r["by_agreement"]}, reverse=True)
    print("\n3 votes: accuracy by agreement (rows, accuracy; summed over seeds)")
    for lv in levels:
        n = sum(r["by_agreement"].get(lv, [0, 0])[0] for r in votes)
        right = sum(r["by_agreement"][lv][0] * r["by_agreement"][lv][1] for r in votes if lv in r["by_agreement"])
        print(f"  {lv:>6}: {n:>4} rows, {right / n:.1%}" if n else f"  {lv:>6}: 0 rows")
    best = {r["strategy"]: r["accuracy"] for r in table}
    checks = [("3 votes beat 1 vote", best[STRATEGIES[1][0]] > best[STRATEGIES[0][0]]),
              ("escalation (< 0.67) beats 3 votes alone", best[STRATEGIES[3][0]] > best[STRATEGIES[1][0]])]
    print()
    for what, ok in checks:
        print(f"{'yes' if ok else 'NO '}  {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="sandbox seeds to average over")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    base = Job.load(ROOT / "jobs/label-gold.toml")
    runs: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        runs += anyio.run(one_seed, seed, base)
    table = summarise(runs)
    if args.json:
        print(json.dumps({"strategies": table, "runs": runs}, ensure_ascii=False))
    else:
        render(table, runs, args.seeds, runs[0]["rows"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
