"""The model card's (and the README's) result tables, generated from the committed results.

`ml2p card` rewrites what sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->` in
`models/weights/MODEL_CARD.md` and `README.md` from the result JSON it names (`accuracy`:
`benchmarks/results/accuracy.json`, the table `ml2p eval` writes; `selection`:
`benchmarks/results/selection.json`, `ml2p bench select`; `paper`: a summary of
`benchmarks/results/paper_comparison.json`, `ml2p bench paper`; `explain`: the relevance maps'
pointing game, `benchmarks/results/explain.json`, `ml2p bench explain`); `ml2p card --check` fails
when a document is out of date, which a test runs. Prose around the markers stays
hand-written. The card must hold every section; the README holds the ones it quotes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from models.evaluate import markdown_table
from models.selection import markdown as selection_table

REPO = Path(__file__).resolve().parents[1]
CARD = REPO / "models" / "weights" / "MODEL_CARD.md"
README = REPO / "README.md"
SOURCES = {"accuracy": REPO / "benchmarks" / "results" / "accuracy.json",
           "selection": REPO / "benchmarks" / "results" / "selection.json",
           "paper": REPO / "benchmarks" / "results" / "paper_comparison.json",
           "explain": REPO / "benchmarks" / "results" / "explain.json"}
REGIME_COLUMNS = {"visual": "(a) visual features only",
                  "imagenet-strict": "(b) ImageNet evidence, strict",
                  "imagenet-all": "(b) ImageNet evidence, all classes"}
METHOD_ROWS = (("fast0tag", "Fast0Tag"), ("lesa", "LESA"), ("biam", "BiAM"), ("ml2p", "ML2P"))


def paper_summary(report: dict) -> str:
    """ZSL / GZSL mAP of each method per regime and training dataset (the strongest ConSE
    variant of each regime, named), then the report's verdict."""
    lines = ["# The paper's comparison, summary", "",
             f"Command: `{report['command']}` ({report['created']}). ZSL / GZSL mAP in %, the "
             "mean over seeds, on each dataset's first test split; ConSE is the stronger of its "
             "two variants (centred or raw label vectors) in each regime. Full tables, "
             "intervals and cost: `benchmarks/results/paper_comparison.md`.", ""]
    for dataset, seeds in report["seeds"].items():
        cells = {regime: report["accuracy"].get(f"{dataset}/{regime}")
                 for regime in report["regimes"]}
        cells = {r: c for r, c in cells.items() if c}
        if not cells:
            continue
        split = next(iter(next(iter(cells.values()))["datasets"]))
        lines += [f"**{split}** (trained on {dataset}'s seen labels, seeds {seeds}):", "",
                  "| method | " + " | ".join(REGIME_COLUMNS[r] for r in cells) + " |",
                  "|---|" + "---|" * len(cells)]

        def cell(methods: dict, key: str) -> str:
            v = methods[key]
            return f"{100 * v['zsl']['map']:.1f} / {100 * v['gzsl']['map']:.1f}"

        row = ["ConSE (stronger variant)"]
        for acc in cells.values():
            methods = acc["datasets"][split]["methods"]
            best = max((k for k in ("conse", "conse-raw") if k in methods),
                       key=lambda k: methods[k]["zsl"]["map"])
            row.append(cell(methods, best) + (" (raw)" if best == "conse-raw" else " (centred)"))
        lines.append("| " + " | ".join(row) + " |")
        for key, name in (("random", "random ranking"), *METHOD_ROWS):
            row = [f"**{name}**" if key == "ml2p" else name]
            row += [cell(acc["datasets"][split]["methods"], key)
                    if key in acc["datasets"][split]["methods"] else "–"
                    for acc in cells.values()]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["Verdict (ML2P against the strongest other method and the strongest ConSE "
              "variant, ZSL mAP, paired 95 % interval of the difference):", ""]
    lines += report.get("verdict", [])
    return "\n".join(lines) + "\n"


POINTING_ROWS = ("seen", "unseen", "seen less prior", "unseen less prior")


def pointing_table(game: dict) -> str:
    """The pointing game's table (`ml2p bench explain`'s `pointing_game`): per map graph and
    label set, accuracy, the centre baseline and their paired difference, 95 % intervals."""
    lines = ["| map graph | labels | pairs | pointing accuracy [95 % CI] | centre baseline "
             "| difference [95 % CI] |", "|---|---|---:|---:|---:|---:|"]
    for precision, result in game["precisions"].items():
        for kind in POINTING_ROWS:
            r = result[kind]
            lines.append(
                f"| {precision} | {kind} | {r['pairs']} | {r['accuracy']:.3f} "
                f"[{r['accuracy_ci95'][0]:.3f}, {r['accuracy_ci95'][1]:.3f}] | "
                f"{r['centre']:.3f} | {r['difference']:+.3f} [{r['difference_ci95'][0]:+.3f}, "
                f"{r['difference_ci95'][1]:+.3f}] |")
    return "\n".join(lines)


def pointing_summary(report: dict) -> str:
    """The pointing game of `ml2p bench explain`, for the card and the README."""
    game = report["pointing_game"]
    return "\n".join([
        "# Relevance maps: the pointing game", "",
        f"Command: `{report['command']}` ({report['created']}); {game['dataset']}, grid "
        f"{game['grid'][0]}×{game['grid'][1]}. {game['rule']}. Unseen labels: "
        f"{', '.join(game['unseen_labels'])}. Intervals: {game['resamples']} bootstrap "
        f"resamples of the images. Diagnostic rows: {game['diagnostic']}. Cost and goals: "
        "`benchmarks/results/explain.md`.", "", pointing_table(game)]) + "\n"


RENDER = {"accuracy": markdown_table, "selection": selection_table, "paper": paper_summary,
          "explain": pointing_summary}


def _demote(markdown: str, levels: int = 2) -> str:
    """Headings `levels` deeper, so a results file's sections nest under the card's."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown,
                  flags=re.MULTILINE)


def section(name: str) -> str:
    """The generated text of one section, from its result file."""
    report = json.loads(SOURCES[name].read_text())
    body = RENDER[name](report).split("\n", 2)[2]  # without the file's own title
    return (f"From `{SOURCES[name].relative_to(REPO)}` (generated by `ml2p card`; do not "
            f"edit by hand).\n\n{_demote(body).strip()}\n")


def render(card: str, complete: bool = True) -> str:
    """`card` with every generated section it holds rewritten; `complete`: it must hold all."""
    for name in SOURCES:
        pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end: {name} -->)",
                             flags=re.DOTALL)
        if not pattern.search(card):
            if complete:
                raise ValueError(f"the model card has no '<!-- generated: {name} -->' section")
            continue
        card = pattern.sub(lambda m, name=name: m.group(1) + section(name) + m.group(2), card)
    return card


def update(path: Path = CARD, check: bool = False) -> bool:
    """Rewrite a document's generated sections (the card must hold all of them); with
    `check`, only report. True if it changed (or, with `check`, would change)."""
    current = path.read_text()
    fresh = render(current, complete=path == CARD)
    if fresh != current and not check:
        path.write_text(fresh)
    return fresh != current
