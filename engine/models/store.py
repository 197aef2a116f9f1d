"""Where model weights live, how they are fetched (resumable, verified) and how a profile's models load.

SAM checkpoints are plain files in our models folder (`BSB_MODELS_DIR`, else the user cache dir), fetched
from Meta's URLs into `<file>.part` with HTTP Range resume, verified, then atomically renamed. Meta
publishes MD5 digests for them (their file names carry the digest's first hex digits), so those are what
we verify; `verify` also takes sha256. DINOv2, SAM 2.1 and EdgeTAM go through the Hugging Face cache
(`HF_HOME` etc.), as transformers-format folders (config.json + model.safetensors).
Offline (`BSB_OFFLINE=1`, `HF_HUB_OFFLINE=1` or the argument) never touches the network. Loading NEVER
falls back to random weights: missing weights are a ModelMissingError with the command that fetches them.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import ModelMissingError
from engine.models.dino import DinoFeatures, load_dino
from engine.models.profiles import Profile, get_profile
from engine.models.sam import SamSegmenter, load_sam
from engine.models.sam2 import Sam2Segmenter, load_sam2
from engine.models.tiny import ensure_tiny_models

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class Checkpoint:
    filename: str
    url: str
    digest: str  # "md5:<hex>" or "sha256:<hex>"
    size_mb: int


SAM_CHECKPOINTS: dict[str, Checkpoint] = {
    "vit_b": Checkpoint("sam_vit_b_01ec64.pth", SAM_URL + "sam_vit_b_01ec64.pth",
                        "md5:01ec64d29a2fca3f0661936605ae66f8", 358),
    "vit_l": Checkpoint("sam_vit_l_0b3195.pth", SAM_URL + "sam_vit_l_0b3195.pth",
                        "md5:0b3195507c641ddb6910d2bb5adee89c", 1192),
    "vit_h": Checkpoint("sam_vit_h_4b8939.pth", SAM_URL + "sam_vit_h_4b8939.pth",
                        "md5:4b8939a88964f0f4ff5f5b2642c598a6", 2445),
}


def models_dir(path: str | Path | None = None) -> Path:
    """The models folder: the argument, else $BSB_MODELS_DIR, else <user cache dir>/bsb/models."""
    if path:
        return Path(path).expanduser()
    if os.environ.get("BSB_MODELS_DIR"):
        return Path(os.environ["BSB_MODELS_DIR"]).expanduser()
    return user_cache_dir() / "bsb" / "models"


def user_cache_dir() -> Path:
    """The platform's per-user cache folder (what platformdirs would say, without the dependency)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def is_offline(offline: bool | None = None) -> bool:
    """Offline if asked, or if BSB_OFFLINE / HF_HUB_OFFLINE is set to a true value."""
    if offline is not None:
        return bool(offline)
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("BSB_OFFLINE", "HF_HUB_OFFLINE"))


def fetch_command(profile: Profile) -> str:
    return f"python -m engine models fetch {profile.name}"


def verify(path: str | Path, digest: str) -> bool:
    """Does the file match 'md5:<hex>' / 'sha256:<hex>'?"""
    algo, _, expected = digest.partition(":")
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() == expected.lower()


def download(url: str, dest: str | Path, digest: str | None = None, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Resumable download into dest + '.part', verified, then renamed onto dest."""
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not have:  # 416: the .part is already complete
                raise
            response = None
        if response is not None:
            with response:
                if have and response.status != 206:  # the server ignored Range: start over
                    have = 0
                length = response.headers.get("Content-Length")
                total = have + int(length) if length else None
                with open(part, "ab" if have else "wb") as out, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                        disable=not progress, file=sys.stderr) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
    except (urllib.error.URLError, OSError) as exc:
        raise ModelMissingError(
            f"could not download {url} ({getattr(exc, 'reason', exc)}); what arrived is kept in {part} "
            "and the next fetch resumes from it") from None
    if digest and not verify(part, digest):
        part.unlink()
        raise ModelMissingError(f"{dest.name} failed its checksum ({digest}); the download was deleted, "
                                "fetch it again")
    os.replace(part, dest)
    return dest


HF_FILES = ["config.json", "model.safetensors"]


def hf_cached(hub_id: str) -> bool:
    """Is this transformers model in the local Hugging Face cache (config and weights)?"""
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(hub_id, f), str) for f in HF_FILES)


def profile_status(profile: Profile, folder: str | Path | None = None) -> dict[str, tuple[bool, str]]:
    """{component: (present, where)} for `models list` and `doctor`."""
    folder = models_dir(folder)
    if profile.random_weights:
        return {"dino": (True, f"built on demand in {folder / 'tiny'}"),
                "sam": (True, f"built on demand in {folder / 'tiny'}")}
    if profile.sam_id:
        sam = (hf_cached(profile.sam_id), f"Hugging Face cache: {profile.sam_id}")
    else:
        sam = ((folder / profile.sam_checkpoint).is_file(), str(folder / profile.sam_checkpoint))
    return {"dino": (hf_cached(profile.dino_id), f"Hugging Face cache: {profile.dino_id}"), "sam": sam}


def fetch_profile(profile: Profile, folder: str | Path | None = None, offline: bool | None = None,
                  progress: bool = True) -> None:
    """Download whatever the profile lacks (a no-op when everything is present)."""
    folder = models_dir(folder)
    if profile.random_weights:
        ensure_tiny_models(folder / "tiny")
        return
    sam_path = folder / profile.sam_checkpoint
    need_sam = not (hf_cached(profile.sam_id) if profile.sam_id else sam_path.is_file())
    need_dino = not hf_cached(profile.dino_id)
    if (need_sam or need_dino) and is_offline(offline):
        missing = [profile.sam_id or str(sam_path)] * need_sam + [profile.dino_id] * need_dino
        where = "the Hugging Face cache" if profile.sam_id else str(folder)
        raise ModelMissingError(
            f"offline mode (BSB_OFFLINE/HF_HUB_OFFLINE) is on and these weights are missing: {', '.join(missing)}; run "
            f"`{fetch_command(profile)}` on a connected machine (the SAM weights go into {where})")
    if need_sam and profile.sam_id:
        _hf_download(profile.sam_id, profile)
    elif need_sam:
        ckpt = SAM_CHECKPOINTS[profile.sam_type]
        download(ckpt.url, sam_path, ckpt.digest, progress=progress)
    if need_dino:
        _hf_download(profile.dino_id, profile)


def _hf_download(hub_id: str, profile: Profile) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(hub_id, allow_patterns=HF_FILES)
    except Exception as exc:  # hub errors come in many classes; all mean "could not fetch"
        raise ModelMissingError(f"could not download {hub_id} from Hugging Face "
                                f"({type(exc).__name__}); check the connection and retry "
                                f"`{fetch_command(profile)}`") from None


def load_profile_models(profile: Profile | str, folder: str | Path | None = None,
                        device: torch.device | None = None, offline: bool | None = None
                        ) -> tuple[DinoFeatures, SamSegmenter | Sam2Segmenter]:
    """The profile's DINOv2 and SAM on `device`, fetching missing weights unless offline.

    The `tiny` profile writes tiny random models once and loads them through the same loaders; both
    models then carry `random_weights = True`.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    device = torch.device("cpu") if device is None else torch.device(device)
    folder = models_dir(folder)
    if profile.random_weights:
        dino_dir, sam_path = ensure_tiny_models(folder / "tiny")
        dino = load_dino(dino_dir, device, profile.dino_input_size, offline=True, random_weights=True)
        return dino, load_sam(profile.sam_type, sam_path, device, random_weights=True)
    hint = fetch_command(profile)
    fetch_profile(profile, folder, offline=offline)
    dino = load_dino(profile.dino_id, device, profile.dino_input_size, offline=True, fetch_hint=hint)
    if profile.sam_id:
        return dino, load_sam2(profile.sam_id, device, offline=True, fetch_hint=hint)
    return dino, load_sam(profile.sam_type, folder / profile.sam_checkpoint, device, fetch_hint=hint)
