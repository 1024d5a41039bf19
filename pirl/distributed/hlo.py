"""Reading compiled programs: the cross-device collectives of an optimized HLO module.

`collectives(compiled.as_text())` lists every all-gather / all-reduce / all-to-all /
reduce-scatter / collective-permute with its per-device result shapes and bytes, so tests can
assert that no transition-sized buffer crosses devices, and `benchmarks/full_scale.py` can report
the traffic of the full-size programs without running them.

```python
compiled = jax.jit(step).lower(*abstract_args).compile()
ops = collectives(compiled.as_text())
largest = max((op.bytes for op in ops), default=0)
```
"""

from __future__ import annotations

import dataclasses
import math
import re

COLLECTIVE_OPS = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter", "collective-permute")
"""HLO opcodes that move data between devices (async `-start` forms included)."""

DTYPE_BYTES = {
    "pred": 1,
    "s4": 1,
    "u4": 1,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
    "c64": 8,
    "c128": 16,
}
"""Bytes per element of the HLO element types."""

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+"
    r"(?P<op>" + "|".join(COLLECTIVE_OPS) + r")(?P<start>-start)?\("
)
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*(?:e\d+m\d+(?:fn)?)?)\[(?P<dims>[\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One cross-device collective of a compiled (SPMD-partitioned, per-device) HLO module."""

    name: str
    """The instruction's name in the module."""
    op: str
    """Opcode without the async suffix: all-gather, all-reduce, all-to-all, reduce-scatter, collective-permute."""
    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    """(element type, dims) of each array the instruction produces on one device."""
    bytes: int
    """Bytes of its (largest, for async starts) result on one device."""


def _arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for m in _ARRAY.finditer(type_text):
        if m["dtype"] in DTYPE_BYTES:
            dims = tuple(int(d) for d in m["dims"].split(",") if d)
            out.append((m["dtype"], dims))
    return out


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective instruction in `hlo_text` (from `compiled.as_text()`), in module order.

    Sync ops count all the arrays they produce (a tuple all-reduce fuses several); an async
    `-start` produces (operand, result) pairs, so it counts its largest array only.
    """
    found = []
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m is None:
            continue
        shapes = tuple(_arrays(m["type"]))
        sizes = [DTYPE_BYTES[d] * math.prod(dims) for d, dims in shapes]
        total = max(sizes, default=0) if m["start"] else sum(sizes)
        found.append(Collective(m["name"], m["op"], shapes, total))
    return found


def bytes_by_op(ops: list[Collective]) -> dict[str, int]:
    """Total bytes per opcode (static count: a collective inside a loop body is counted once)."""
    totals: dict[str, int] = {}
    for op in ops:
        totals[op.op] = totals.get(op.op, 0) + op.bytes
    return totals
