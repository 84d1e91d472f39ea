"""An SAE's weights read back for a run: the decoder directions and JumpReLU thresholds of a layer,
from the run's decoder file, the SAE's folder or its SAELens release in the hub cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saelineage.errors import SaelineageError
from saelineage.run import RunDir


def load_decoder(run: RunDir, layer: int) -> np.ndarray | None:
    """Decoder directions [d_sae, d_in] of `layer`, from the run's decoder file, its SAE folder or its SAELens
    release (hub cache); None if unknown or unreachable."""
    meta = run.load().saes.get(int(layer)) or {}
    if meta.get("decoder_file"):
        from safetensors import safe_open

        with safe_open(str(run.file(meta["decoder_file"])), "numpy") as fh:
            return fh.get_tensor(f"l{layer}.W_dec")
    if meta.get("path") and Path(meta["path"]).exists():
        from saelineage.saes.loading import load_sae

        return load_sae(meta["path"]).W_dec.float().cpu().numpy()
    if meta.get("release") and meta.get("sae_id"):  # a SAELens hub release: from the Hugging Face cache
        from saelineage.saes.release import load_release

        try:
            return load_release(meta["release"], meta["sae_id"]).W_dec.float().cpu().numpy()
        except SaelineageError:  # not cached and offline: dec_cosine is reported missing for this layer
            return None
    return None


def load_threshold(run: RunDir, layer: int) -> np.ndarray | None:
    """JumpReLU thresholds [d_sae] of `layer`, folded into its decoder rows by the data-free match
    (stats/sae_match.py); None for TopK and ReLU SAEs, for a decoder file without thresholds (runs
    written before they were stored) and when the SAE is unreachable."""
    meta = run.load().saes.get(int(layer)) or {}
    if meta.get("decoder_file"):
        from safetensors import safe_open

        with safe_open(str(run.file(meta["decoder_file"])), "numpy") as fh:
            key = f"l{layer}.threshold"
            return fh.get_tensor(key) if key in fh.keys() else None
    if meta.get("architecture") != "jumprelu":
        return None
    sae = None
    if meta.get("path") and Path(meta["path"]).exists():
        from saelineage.saes.loading import load_sae

        sae = load_sae(meta["path"])
    elif meta.get("release") and meta.get("sae_id"):
        from saelineage.saes.release import load_release

        try:
            sae = load_release(meta["release"], meta["sae_id"])
        except SaelineageError:
            return None
    if sae is None or sae.threshold is None:
        return None
    return sae.threshold.float().cpu().numpy()
