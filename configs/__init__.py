"""Named experiment presets (SFT and RL) and mesh presets, read by tyro.

`all_presets()` maps each preset name to (one-line description, config). Presets are defined in
`configs/sft.py` and `configs/rl.py`; mesh presets in `configs/meshes.py`. A user adds a preset by
adding an entry there, or overrides any field of an existing one on the command line.
"""

from __future__ import annotations

import difflib
from typing import Any


def all_presets() -> dict[str, tuple[str, Any]]:
    """Every named training preset: name -> (description, frozen config)."""
    from configs import rl, sft

    presets: dict[str, tuple[str, Any]] = {}
    for module in (sft, rl):
        for name, entry in module.presets().items():
            if name in presets:
                raise ValueError(f"preset {name!r} is defined twice (in configs/{module.__name__}.py)")
            presets[name] = entry
    return presets


def get_preset(name: str) -> Any:
    """The config of preset `name`; an unknown name raises with the list of valid names."""
    presets = all_presets()
    if name not in presets:
        raise KeyError(unknown_name_message("config", name, presets))
    return presets[name][1]


def unknown_name_message(what: str, name: str, valid: Any) -> str:
    """An error message for an unknown name, with close matches and the full list of valid names."""
    names = sorted(valid)
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown {what} name {name!r}.{hint} Valid names: {', '.join(names)}"
