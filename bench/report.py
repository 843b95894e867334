"""Print the tables of the last run from bench/results/*.json: .venv/bin/python bench/report.py [--markdown]."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import RESULTS, Row, fmt  # noqa: E402

ORDER = ("8", "1", "1b", "2", "3", "4", "5", "6", "7", "micro")


def load() -> list[tuple[Row, dict]]:
    out = []
    for key in ORDER:
        path = RESULTS / f"{key}.json"
        if path.exists():
            data = json.loads(path.read_text())
            out.append((Row(data["row"], data["title"], data["lines"], data["notes"], data["extra"]), data["context"]))
    return out


def markdown(row: Row) -> str:
    lines = [f"### Row {row.key}: {row.title}", "", "| workload | value | ratio | vs | target | met |",
             "| --- | ---: | ---: | --- | --- | --- |"]
    for line in row.lines:
        value = "-" if line["value"] is None else f"{fmt(line['value'])} {line['unit']}".strip()
        ratio = "-" if line["ratio"] is None else f"{line['ratio']:.2f}x"
        met = {True: "yes", False: "**no**", None: "-"}[line["met"]]
        lines.append(f"| {line['workload']} | {value} | {ratio} | {line['baseline']} | {line['target']} | {met} |")
    lines += [""] + [f"- {n}" for n in row.notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="Markdown tables (for docs/PERFORMANCE.md).")
    args = parser.parse_args()
    for row, _ in load():
        print(markdown(row) if args.markdown else row.table() + "\n")


if __name__ == "__main__":
    main()
