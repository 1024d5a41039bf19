"""SFT presets: `<data config>_sft` for every named data config (see pirl/data/configs.py)."""

from __future__ import annotations

from typing import Any


def presets() -> dict[str, tuple[str, Any]]:
    """name -> (description, config) of every SFT preset."""
    from pirl.sft.config import sft_presets

    return sft_presets()
