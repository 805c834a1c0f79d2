"""Is the output-distance proxy of ``yoloslim sensitivity --metric output`` a stand-in for mAP?

Compares two curve files of the same model, method and ratios (one ``--metric map``, one
``--metric output``): Spearman's rank correlation of the mAP lost and the output distance over every
(group, ratio) entry and over the groups at each ratio, and how many of the mAP's ten most
sensitive groups (at the largest ratio) the proxy also puts in its ten. ::

    python bench/sensitivity_proxy.py MAP.json OUTPUT.json
"""

from __future__ import annotations

import json
import sys

import numpy as np


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(x: list[float]) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # ties share their mean rank
            r[x == v] = r[x == v].mean()
        return r
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def compare(map_file: str, output_file: str) -> dict:
    m, o = json.loads(open(map_file).read()), json.loads(open(output_file).read())
    if m["ratios"] != o["ratios"] or [g["name"] for g in m["groups"]] != [g["name"] for g in o["groups"]]:
        raise SystemExit("the two files measured different groups or ratios")
    ml = [x for g in m["groups"] for x in g["loss"]]
    ol = [x for g in o["groups"] for x in g["loss"]]
    per_ratio = {r: spearman([g["loss"][i] for g in m["groups"]], [g["loss"][i] for g in o["groups"]])
                 for i, r in enumerate(m["ratios"])}
    top = {g["name"] for g in sorted(m["groups"], key=lambda g: -g["loss"][-1])[:10]}
    top_o = {g["name"] for g in sorted(o["groups"], key=lambda g: -g["loss"][-1])[:10]}
    return {"entries": len(ml), "spearman_all": round(spearman(ml, ol), 3),
            "spearman_per_ratio": {k: round(v, 3) for k, v in per_ratio.items()}, "top10_shared": len(top & top_o)}


if __name__ == "__main__":
    print(json.dumps(compare(sys.argv[1], sys.argv[2]), indent=1))
