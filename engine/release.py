"""Released checkpoints: the registry that pins each file's SHA-256, and finding a checkpoint by name.

``pretrained_model/RELEASES.json`` maps a release name to its file, SHA-256, size and input size;
``python -m engine.export`` writes the entry next to the file it exports, so nothing in it is typed
by hand. A checkpoint given by release name, or by a path whose folder's registry lists it, is
hashed before it is loaded: a file that differs from the one released stops with one line naming
the file and both hashes. (The checkpoint's own checksum header, ``engine/checkpoint.py``, catches
corruption; the registry catches a different file under the released name.)

A safetensors release (``NAME.safetensors`` + its sidecar ``NAME.json``, ``engine/export.py``) has
both files' SHA-256 in its entry (``sha256`` and ``sidecar_sha256``); both are checked, and a
mismatch names the file that differs. A name without a registry entry is looked for as
``NAME.pt``, then ``NAME.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

from data.atomic import write_atomic
from data.cache import file_sha256
from engine.checkpoint import SAFETENSORS_SUFFIX, CheckpointError

RELEASE_DIR = Path(__file__).resolve().parents[1] / "pretrained_model"
REGISTRY = "RELEASES.json"
DEFAULT_RELEASE = "deepmt_dr_idrid_small"
# How each release is made (pretrained_model/README.md has the model cards and every command).
RELEASE_RECIPE = {
    DEFAULT_RELEASE: (
        "python train.py --dataset idrid --data-root ../shared/data/idrid --config configs/idrid_small.yaml "
        "--name idrid_small train.init_from=synthetic train.init_synthetic_hr_size=128 "
        "loss.seg_loss=dice_bce",
        f"python -m engine.export runs/idrid_small --out pretrained_model/{DEFAULT_RELEASE}{SAFETENSORS_SUFFIX}",
    ),
    "deepmt_dr_idrid_1024": (  # starts from the 512 release (configs/idrid_1024.yaml's train.init_from)
        "python train.py --dataset idrid --data-root ../shared/data/idrid --config configs/idrid_1024.yaml",
        f"python -m engine.export runs/idrid_1024 --out pretrained_model/deepmt_dr_idrid_1024{SAFETENSORS_SUFFIX}",
    ),
}


def read_registry(folder: str | Path) -> dict[str, dict]:
    """``{name: entry}`` of ``folder/RELEASES.json``; empty when there is none."""
    path = Path(folder) / REGISTRY
    if not path.is_file():
        return {}
    try:
        registry = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not a readable release registry: {error}") from error
    if not isinstance(registry, dict) or not all(
        isinstance(entry, dict) and "file" in entry and "sha256" in entry
        for entry in registry.values()
    ):
        raise CheckpointError(
            f"{path} is not a release registry (expected {{name: {{file, sha256, ...}}}})"
        )
    return registry


def register(path: str | Path, entry: dict) -> Path:
    """Add or replace the entry of the release file ``path`` in its folder's registry (atomically)."""
    path = Path(path)
    registry = read_registry(path.parent)
    registry[path.stem] = {"file": path.name, **entry}
    target = path.parent / REGISTRY
    write_atomic(target, (json.dumps(dict(sorted(registry.items())), indent=2) + "\n").encode())
    return target


def verify_release(path: str | Path) -> dict | None:
    """The registry entry of ``path`` after checking its SHA-256 (and its sidecar's, for a
    safetensors release, given by either file), or None if no registry lists it."""
    path = Path(path)
    entries = [
        entry
        for entry in read_registry(path.parent).values()
        if path.name in (entry["file"], entry.get("sidecar"))
    ]
    if not entries:
        return None
    entry = entries[0]
    pinned = [(path.parent / entry["file"], entry["sha256"])]
    if entry.get("sidecar"):
        if not entry.get("sidecar_sha256"):
            raise CheckpointError(
                f"{path.parent / REGISTRY} lists the sidecar {entry['sidecar']} without its sidecar_sha256: export the release again"
            )
        pinned.append((path.parent / entry["sidecar"], entry["sidecar_sha256"]))
    for file, expected in pinned:
        if not file.is_file():
            raise CheckpointError(
                f"{file} is absent: {path.parent / REGISTRY} releases it with SHA-256 {expected} (download or export it again)"
            )
        actual = file_sha256(file)
        if actual != expected:
            raise CheckpointError(
                f"{file} has SHA-256 {actual} but {path.parent / REGISTRY} releases it with {expected}: "
                "the file is not the released one (download or export it again)"
            )
    return entry


def _absent_release(name: str, path: Path) -> CheckpointError:
    how = RELEASE_RECIPE.get(name, (f"python -m engine.export RUN_FOLDER --out {path}",))
    return CheckpointError(
        f"{path} is absent: make it with `" + "` then `".join(how) + "`, or pass --checkpoint FILE"
    )


def _shown(path: Path) -> Path:
    """``path`` relative to the working folder when it is below it (shorter messages)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def resolve_checkpoint(name_or_path: str | Path, release_dir: str | Path | None = None) -> Path:
    """A checkpoint file from a path, a run folder (its ``checkpoints/best.pt``) or a release name
    (``release_dir/RELEASES.json``, else ``release_dir/NAME.pt`` or ``NAME.safetensors``; default
    ``pretrained_model/``), hash-checked when released (a safetensors release: both its files)."""
    release_dir = Path(release_dir) if release_dir is not None else RELEASE_DIR
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        candidate = candidate / "checkpoints" / "best.pt"
        if not candidate.is_file():
            raise CheckpointError(
                f"{candidate.parent.parent} is a folder without checkpoints/best.pt: pass a checkpoint file or a run folder"
            )
    elif not candidate.is_file():
        name = str(name_or_path)
        looks_like_name = candidate.suffix == "" and len(candidate.parts) == 1
        if not looks_like_name:
            if (
                candidate.stem in RELEASE_RECIPE
                and candidate.parent.resolve() == release_dir.resolve()
            ):
                raise _absent_release(candidate.stem, candidate)
            raise CheckpointError(f"checkpoint not found: {candidate}")
        registry = read_registry(release_dir)
        if name in registry:
            candidate = _shown(release_dir / registry[name]["file"])
        else:  # an unregistered release: the .pt, else the safetensors weights
            found = [
                release_dir / f"{name}{suffix}"
                for suffix in (".pt", SAFETENSORS_SUFFIX)
                if (release_dir / f"{name}{suffix}").is_file()
            ]
            # absent: name the file its recipe makes (the open format), else the .pt
            suffix = SAFETENSORS_SUFFIX if name in RELEASE_RECIPE else ".pt"
            candidate = _shown(found[0] if found else release_dir / f"{name}{suffix}")
        if not candidate.is_file():
            if name in registry or name in RELEASE_RECIPE:
                raise _absent_release(name, candidate)
            known = ", ".join(sorted(set(registry) | set(RELEASE_RECIPE)))
            raise CheckpointError(
                f"unknown checkpoint {name!r}: not a file, a run folder or a release in {release_dir / REGISTRY} (releases: {known})"
            )
    verify_release(candidate)
    return candidate
