"""Paired GenEval-style difference between two models scored on the same prompts and sample seeds.

Reads geneval rows (records/<model>/geneval.*.rows.jsonl) of model A and model B, one pair per run
(several pairs: e.g. two training seeds), checks that each pair holds the same prompts and seeds, and
prints overall(A) - overall(B) (mean of the six task accuracies, averaged over pairs) with a bootstrap
over prompts, stratified by task (a prompt's images are resampled together; 4000 draws, seed 0).
The training seeds themselves are not resampled: with one pair, the interval covers prompt sampling only.

Usage: python scripts/paired_geneval.py A_rows.jsonl B_rows.jsonl [A2_rows.jsonl B2_rows.jsonl ...]
"""

import json
import random
import sys


def rows(path: str) -> dict[int, dict]:
    with open(path) as f:
        return {r["item"]: r for r in map(json.loads, f)}


def main(paths: list[str]) -> None:
    if not paths or len(paths) % 2:
        raise SystemExit("give rows files in pairs: A B [A2 B2 ...]")
    pairs = [(rows(a), rows(b)) for a, b in zip(paths[::2], paths[1::2])]
    ref = pairs[0][0]
    for a, b in pairs:
        same = a.keys() == b.keys() == ref.keys() and all(
            (a[i]["prompt"], a[i]["seed"]) == (b[i]["prompt"], b[i]["seed"]) == (ref[i]["prompt"], ref[i]["seed"]) for i in ref
        )
        if not same:
            raise SystemExit("the rows files do not hold the same prompts and seeds item by item; they cannot be paired")
    tags = sorted({r["tag"] for r in ref.values()})
    diff = {i: sum(int(a[i]["correct"]) - int(b[i]["correct"]) for a, b in pairs) / len(pairs) for i in ref}
    prompts: dict[tuple[str, int], list[int]] = {}
    for i, r in ref.items():
        prompts.setdefault((r["tag"], r["prompt_index"]), []).append(i)
    by_tag = {t: [k for k in prompts if k[0] == t] for t in tags}

    def overall(chosen: dict[str, list[tuple[str, int]]]) -> float:
        means = []
        for keys in chosen.values():
            items = [i for k in keys for i in prompts[k]]
            means.append(sum(diff[i] for i in items) / len(items))
        return sum(means) / len(means)

    full = overall(by_tag)
    rng = random.Random(0)
    draws = sorted(overall({t: [rng.choice(ks) for _ in ks] for t, ks in by_tag.items()}) for _ in range(4000))
    se = (sum((x - full) ** 2 for x in draws) / len(draws)) ** 0.5
    share = sum(x <= 0 for x in draws) / len(draws)
    a_only = sum(int(a[i]["correct"]) > int(b[i]["correct"]) for a, b in pairs for i in ref)
    b_only = sum(int(a[i]["correct"]) < int(b[i]["correct"]) for a, b in pairs for i in ref)
    print(
        f"{len(pairs)} pair(s) of {len(ref)} images: overall(A) - overall(B) = {full:+.4f}, bootstrap se {se:.4f}, "
        f"95% interval [{draws[100]:+.4f}, {draws[3899]:+.4f}], share of draws <= 0: {share:.4f}; "
        f"images right for A only: {a_only}, for B only: {b_only}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
