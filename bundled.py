"""The files the package ships: the demo models and the sample images, and how a manifest names a demo
model (``bundled:NAME``: an install moves the package, the name stays valid). Standard library only, so
the CLI finds them without importing torch."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import ArtifactError

DEMO_DIR = Path(__file__).parent / "model" / "demo"
DEMO_CHECKPOINT = DEMO_DIR / "rwkv7-demo.pth"  # trained by model/demo/train.py
VISION_DEMO_CHECKPOINT = DEMO_DIR / "vrwkv-demo.pth"  # trained by model/demo/train_vision.py
SAMPLE_IMAGES = tuple(DEMO_DIR / f"sample-{name}.png" for name in ("ring", "star", "checkerboard"))  # for the vision demo
BUNDLED = "bundled:"  # a manifest's source.checkpoint with this prefix names one of CHECKPOINTS
CHECKPOINTS = {path.name: path for path in (DEMO_CHECKPOINT, VISION_DEMO_CHECKPOINT)}


def recorded_checkpoint(path: str | Path) -> str:
    """What a manifest records as its source checkpoint: ``bundled:NAME`` for a bundled demo model, else
    the absolute path."""
    resolved = Path(path).resolve()
    named = next((name for name, bundled in CHECKPOINTS.items() if bundled.resolve() == resolved), None)
    return f"{BUNDLED}{named}" if named else str(resolved)


def source_checkpoint(source: dict[str, str]) -> Path:
    """The checkpoint a manifest's ``source`` names. ``bundled:NAME`` resolves only to a file of
    CHECKPOINTS (the manifest is untrusted: nothing it says leads a load outside the demo folder); an
    absolute path that no longer exists but whose recorded sha256 is a bundled model's (an artifact built
    before the package was reinstalled elsewhere) resolves to that model; any other path is returned as is."""
    recorded = source["checkpoint"]
    if recorded.startswith(BUNDLED):
        name = recorded.removeprefix(BUNDLED)
        if name not in CHECKPOINTS:
            raise ArtifactError(f"the manifest's source checkpoint {recorded!r} is not a model rwkv-edge ships "
                                f"({', '.join(BUNDLED + n for n in CHECKPOINTS)}): give the checkpoint's path")
        return CHECKPOINTS[name]
    path = Path(recorded)
    if not path.exists():
        moved = next((b for b in CHECKPOINTS.values() if _sha256(b) == source.get("sha256")), None)
        return moved or path
    return path


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
