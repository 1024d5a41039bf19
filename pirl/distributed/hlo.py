"""Reading compiled programs: the cross-device collectives and the matmul FLOPs of an optimized
HLO module, with every loop body counted as often as it runs.

`collectives(compiled.as_text())` lists every all-gather / all-reduce / all-to-all /
reduce-scatter / collective-permute with its per-device result shapes, bytes and run count (the
known trip counts of the loops around it), so tests can assert that no transition-sized buffer
crosses devices, and `benchmarks/full_scale.py` can report the traffic of the full-size programs
without running them. `dot_flops` counts the dot / convolution FLOPs per call: XLA's own
`cost_analysis()` counts each while-loop body once (layer scans, micro-batch loops, ...).

```python
compiled = jax.jit(step).lower(*abstract_args).compile()
ops = collectives(compiled.as_text())
moved = bytes_by_op(ops, executed=True)       # {"all-gather": bytes per call per device, ...}
flops = dot_flops(compiled.as_text()).flops   # per device per call
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
    count: int = 1
    """Times it runs per call of the program: the product of the known trip counts of the loops
    around it (1 outside loops; a loop of unknown trip count counts once)."""


def _arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for m in _ARRAY.finditer(type_text):
        if m["dtype"] in DTYPE_BYTES:
            dims = tuple(int(d) for d in m["dims"].split(",") if d)
            out.append((m["dtype"], dims))
    return out


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective instruction in `hlo_text` (from `compiled.as_text()`), in module order,
    with how often it runs (`count`, from the trip counts of the loops around it).

    Sync ops count all the arrays they produce (a tuple all-reduce fuses several); an async
    `-start` produces (operand, result) pairs, so it counts its largest array only.
    """
    module = parse_module(hlo_text)
    counts = execution_counts(module)
    found = []
    for comp, lines in module.computations.items():
        for line in lines:
            m = _INSTRUCTION.match(line)
            if m is None:
                continue
            shapes = tuple(_arrays(m["type"]))
            sizes = [DTYPE_BYTES[d] * math.prod(dims) for d, dims in shapes]
            total = max(sizes, default=0) if m["start"] else sum(sizes)
            found.append(Collective(m["name"], m["op"], shapes, total, counts.get(comp, 0)))
    return found


def bytes_by_op(ops: list[Collective], *, executed: bool = False) -> dict[str, int]:
    """Total bytes per opcode: static (each op once, default) or `executed` (times its `count`,
    i.e. what one call of the program moves per device)."""
    totals: dict[str, int] = {}
    for op in ops:
        totals[op.op] = totals.get(op.op, 0) + op.bytes * (op.count if executed else 1)
    return totals


# ----------------------------------------------------------------------------- module structure

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*")
_CALLEES = re.compile(
    r"\b(?P<kind>body|condition|calls|to_apply|true_computation|false_computation)=%?(?P<name>[\w.\-]+)"
)
_BRANCHES = re.compile(r"\bbranch_computations=\{(?P<names>[^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(?P<n>\d+)"\}')
_ATTRS = re.compile(r"(?P<key>lhs_contracting_dims|dim_labels)=(?P<value>\{[\d,]*\}|[\w>\-]+)")


@dataclasses.dataclass(frozen=True)
class Module:
    """An HLO module's text split into computations (instruction lines, headers dropped)."""

    computations: dict[str, list[str]]
    """Computation name -> its instruction lines."""
    entry: str
    """Name of the ENTRY computation."""


def parse_module(hlo_text: str) -> Module:
    """Split `compiled.as_text()` into its computations."""
    computations: dict[str, list[str]] = {}
    entry = None
    current: list[str] | None = None
    for line in hlo_text.splitlines():
        if current is None or not line.startswith((" ", "\t", "}")):
            m = _COMPUTATION.match(line)
            if m:
                current = computations.setdefault(m["name"], [])
                if line.startswith("ENTRY"):
                    entry = m["name"]
                continue
        if line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return Module(computations, entry)


def _split_type(rest: str) -> tuple[str, str]:
    """'f32[2]{0} dot(...)...' or '(f32[2], s32[]) while(...)' -> (type text, the rest)."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :].lstrip()
    head, _, tail = rest.partition(" ")
    return head, tail


def _operands(call: str) -> tuple[str, str]:
    """'dot(%a, %b), lhs_contracting_dims={1}' -> ('%a, %b', ', lhs_contracting_dims={1}')."""
    depth = 0
    for i, ch in enumerate(call):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch == ")":
            return call[call.index("(") + 1 : i], call[i + 1 :]
    return call, ""


def _calls(lines: list[str]) -> list[tuple[str, int | None, str]]:
    """(callee, trip count for a while body else 1 (None: unknown), calling instruction) of a computation."""
    out: list[tuple[str, int | None, str]] = []
    for line in lines:
        d = _DEFINITION.match(line)
        if d is None:
            continue
        _, rest = _split_type(line[d.end() :])
        _, attrs = _operands(rest)
        trip: int | None = 1
        if rest.startswith("while("):
            t = _TRIP_COUNT.search(attrs)
            trip = int(t["n"]) if t else None
        for c in _CALLEES.finditer(attrs):
            if c["kind"] == "body":
                out.append((c["name"], trip, d["name"]))
            elif c["kind"] != "condition":  # conditions hold no work worth counting
                out.append((c["name"], 1, d["name"]))
        for b in _BRANCHES.finditer(attrs):
            out.extend((n.strip().lstrip("%"), 1, d["name"]) for n in b["names"].split(",") if n.strip())
    return out


def execution_counts(module: Module, *, trips: bool = True) -> dict[str, int]:
    """How many times each computation runs per call of the module: the sum over its call sites
    of the caller's count times the loop trip count (`trips=False`: every loop body once, the
    convention of XLA's cost analysis). Both branches of a conditional count; a while loop without
    a known trip count counts once. Computations never reached from ENTRY are absent."""
    calls = {name: _calls(lines) for name, lines in module.computations.items()}
    order: list[str] = []  # reverse post-order from ENTRY = callers before callees
    seen: set[str] = set()

    def visit(name: str) -> None:
        seen.add(name)
        for callee, _, _ in calls.get(name, ()):
            if callee not in seen and callee in calls:
                visit(callee)
        order.append(name)

    visit(module.entry)
    counts = {name: 0 for name in order}
    counts[module.entry] = 1
    for name in reversed(order):
        for callee, trip, _ in calls[name]:
            if callee in counts:
                counts[callee] += counts[name] * ((trip or 1) if trips else 1)
    return counts


# ----------------------------------------------------------------------------- FLOPs


@dataclasses.dataclass(frozen=True)
class LoopFlops:
    """Matmul / convolution FLOPs of a compiled module per call, counted per executed iteration."""

    flops: float
    """Dot + convolution FLOPs (2 per multiply-add), every while body times its known trip count."""
    flops_bodies_once: float
    """The same ops with every loop body counted once (the convention of XLA's cost analysis)."""
    trip_counts: tuple[int | None, ...]
    """Known trip count of every while loop in the module (None: unknown, counted once)."""


def _own_flops(lines: list[str]) -> float:
    shapes: dict[str, tuple[int, ...]] = {}
    total = 0.0
    for line in lines:
        d = _DEFINITION.match(line)
        if d is None:
            continue
        type_text, rest = _split_type(line[d.end() :])
        arrays = _arrays(type_text)
        if len(arrays) == 1 and not type_text.startswith("("):
            shapes[d["name"]] = arrays[0][1]
        opcode = rest.partition("(")[0]
        if opcode not in ("dot", "convolution"):
            continue
        operand_text, attrs = _operands(rest)
        names = re.findall(r"%([\w.\-]+)", operand_text)
        attr = {m["key"]: m["value"] for m in _ATTRS.finditer(attrs)}
        out = math.prod(arrays[0][1]) if arrays else 0
        if opcode == "dot" and names and names[0] in shapes:
            lhs = shapes[names[0]]
            dims = [int(i) for i in attr.get("lhs_contracting_dims", "{}").strip("{}").split(",") if i]
            total += 2.0 * out * math.prod(lhs[i] for i in dims)
        elif opcode == "convolution" and len(names) > 1 and names[1] in shapes:
            kernel = shapes[names[1]]
            labels = attr.get("dim_labels", "").split("_")
            kernel_labels = labels[1].split("->")[0] if len(labels) > 1 else ""
            window = math.prod(kernel[i] for i, c in enumerate(kernel_labels) if c.isdigit())
            features = kernel[kernel_labels.index("i")] if "i" in kernel_labels else 1
            total += 2.0 * out * window * features
    return total


def dot_flops(hlo_text: str) -> LoopFlops:
    """FLOPs of every `dot` and `convolution` in `hlo_text` (`compiled.as_text()`) per call of the
    program, each loop body multiplied by its `known_trip_count` (XLA's cost analysis counts it once).

    Elementwise ops, reductions and transcendentals are not counted (a few % of a transformer's
    FLOPs). For an SPMD-partitioned module the figure is per device.
    """
    module = parse_module(hlo_text)
    own = {name: _own_flops(lines) for name, lines in module.computations.items()}
    with_trips = execution_counts(module)
    once = execution_counts(module, trips=False)
    whiles = [line for lines in module.computations.values() for line in lines if " while(" in line]
    matches = [_TRIP_COUNT.search(line) for line in whiles]
    trip_counts = tuple(int(m["n"]) if m else None for m in matches)
    return LoopFlops(
        sum(own[c] * n for c, n in with_trips.items()),
        sum(own[c] * n for c, n in once.items()),
        trip_counts,
    )
