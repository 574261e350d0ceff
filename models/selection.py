"""The recipe-selection table (`ml2p bench select` writes the JSON): rendered here, on the
training side, so that the model card can quote it (`ml2p card`)."""

from __future__ import annotations


def markdown(report: dict) -> str:
    conse = report["conse_all_classes"]
    lines = ["# Recipe selection on validation data", "",
             f"Command: `{report['command']}` ({report['created']}, {report['seconds'] / 60:.1f}"
             f" min). Split: {report['split']}, {conse['images']} images; mAP in %, the mean "
             f"over seeds {report['seeds']} of the last epoch. ConSE (all ImageNet classes) on "
             f"the same images: ZSL {100 * conse['zsl']:.1f}, GZSL {100 * conse['gzsl']:.1f}.",
             "", "| candidate | what | ZSL mAP | GZSL mAP | ZSL per seed | train s per seed |",
             "|---|---|---:|---:|---|---|"]
    for name, c in report["candidates"].items():
        per_seed = " / ".join(f"{100 * r['zsl']:.1f}" for r in c["runs"])
        seconds = " / ".join(f"{r.get('train_seconds', r['seconds']):.0f}" for r in c["runs"])
        lines.append(f"| {name} | {c['what']} | {100 * c['zsl']:.1f} | {100 * c['gzsl']:.1f} | "
                     f"{per_seed} | {seconds} |")
    best = max(report["candidates"], key=lambda n: report["candidates"][n]["zsl"])
    lines += ["", f"Highest validation ZSL mAP (the rule that picks the shipped recipe): {best}. "
              f"Train seconds are the epochs' own (2 CPU cores shared with other work)."]
    return "\n".join(lines) + "\n"
