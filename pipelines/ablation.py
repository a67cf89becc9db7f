"""DVC stage `ablation`: one table of every evaluated variant, with bootstrap CIs."""

from __future__ import annotations

import json
from pathlib import Path

from skinflow.io import write_json, write_text

IN_DIR = Path("metrics/eval")
OUT_MD = "reports/ablation.md"
OUT_JSON = "reports/ablation.json"
# "{k}": the evaluation's top-k (k = min(6, n_classes)), so small label spaces keep their columns.
COLUMNS = ("top1_exact", "top{k}_exact", "top1_grounded", "top{k}_grounded", "hierarchical_nine",
           "malignant_miss_at{k}", "format_compliance")
# The paper's ablation rows first (base -> +S2 -> +S1+S2 -> +DVE+S1+S2), then controls and baselines.
ORDER = ("warmup", "stage2_only", "s1_s2", "stage1", "stage2", "dve_only", "vision_lora", "cfa", "skinvl")


def _cell(entry: dict) -> str:
    if entry.get("value") is None:
        return "—"
    low, high = entry.get("ci_low"), entry.get("ci_high")
    ci = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else ""
    return f"{100 * entry['value']:.1f}{ci}"


def main() -> dict:
    found = {p.stem: json.loads(p.read_text()) for p in sorted(IN_DIR.glob("*.json"))}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    ks = {name: found[name].get("k", 6) for name in names}
    table = {name: {col.format(k=ks[name]): found[name]["overall"].get(col.format(k=ks[name])) for col in COLUMNS}
             | {"n_images": found[name]["n_images"], "model": found[name].get("model"), "k": ks[name]}
             for name in names}
    header = [c.format(k=ks[names[0]]) if len(set(ks.values())) == 1 else c.replace("{k}", "k") for c in COLUMNS]
    lines = ["# Ablation (test split, % with bootstrap 95 % CI)", "",
             "| variant | n | " + " | ".join(header) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name in names:
        row = table[name]
        cells = [_cell(row[c.format(k=ks[name])] or {}) for c in COLUMNS]
        lines.append(f"| {name} | {row['n_images']} | " + " | ".join(cells) + " |")
    write_text(OUT_MD, "\n".join(lines) + "\n")
    write_json(OUT_JSON, table)
    print("\n".join(lines))
    return table


if __name__ == "__main__":
    main()
