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
             "", "| candidate | what | ZSL mAP | GZSL mAP | train s |", "|---|---|---:|---:|---:|"]
    for name, c in report["candidates"].items():
        seconds = sum(r["seconds"] for r in c["runs"])
        lines.append(f"| {name} | {c['what']} | {100 * c['zsl']:.1f} | {100 * c['gzsl']:.1f} | "
                     f"{seconds:.0f} |")
    best = max(report["candidates"], key=lambda n: report["candidates"][n]["zsl"])
    lines += ["", f"Highest validation ZSL mAP: {best}."]
    return "\n".join(lines) + "\n"
