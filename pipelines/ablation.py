"""DVC stage `ablation`: one table of every evaluated variant, with bootstrap CIs."""

from __future__ import annotations

import json
from pathlib import Path

from skinflow.io import write_json, write_text

IN_DIR = Path("metrics/eval")
OUT_MD = "reports/ablation.md"
OUT_JSON = "reports/ablation.json"
COLUMNS = ("top1_exact", "top6_exact", "top1_grounded", "top6_grounded", "hierarchical_nine",
           "malignant_miss_at6", "format_compliance")
ORDER = ("warmup", "stage2_only", "stage1", "stage2", "dve_stage2", "dve_only", "vision_lora", "cfa", "skinvl")


def _cell(entry: dict) -> str:
    if entry.get("value") is None:
        return "—"
    low, high = entry.get("ci_low"), entry.get("ci_high")
    ci = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else ""
    return f"{100 * entry['value']:.1f}{ci}"


def main() -> dict:
    found = {p.stem: json.loads(p.read_text()) for p in sorted(IN_DIR.glob("*.json"))}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    table = {name: {col: found[name]["overall"].get(col) for col in COLUMNS} | {
        "n_images": found[name]["n_images"], "model": found[name].get("model")} for name in names}
    lines = ["# Ablation (test split, % with bootstrap 95 % CI)", "",
             "| variant | n | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name in names:
        row = table[name]
        lines.append(f"| {name} | {row['n_images']} | " + " | ".join(_cell(row[c] or {}) for c in COLUMNS) + " |")
    write_text(OUT_MD, "\n".join(lines) + "\n")
    write_json(OUT_JSON, table)
    print("\n".join(lines))
    return table


if __name__ == "__main__":
    main()
