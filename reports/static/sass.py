"""Reading a kernel's SASS (``cuobjdump -sass`` listing): instruction and ``BAR`` counts, the
innermost loops, and the loops a work model counts by their role (:data:`LOOP_ROLES`)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["LOOP_ROLES", "Sass", "loop_roles", "parse_sass"]

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


@dataclass
class Sass:
    instructions: int
    barriers: int
    loops: list[tuple[int, int, int]]  # innermost loops: (instructions, barriers, shuffles)
    loop_opcodes: list[dict[str, int]] = field(default_factory=list)  # per loop, same order

    @property
    def hot_loop(self) -> tuple[int, int, int]:
        """The innermost loop with the most instructions (0s when there is none)."""
        return max(self.loops, default=(0, 0, 0))


def parse_sass(text: str) -> Sass:
    """Instruction count, ``BAR`` count and innermost loops (ranges closed by a backward
    branch that contain no other backward branch) of a ``cuobjdump -sass`` listing."""
    ops: list[tuple[int, str, str]] = []
    for match in _INSTR.finditer(text):
        address, _, opcode, operands = match.groups()
        ops.append((int(address, 16), opcode, operands))
    address_index = {addr: i for i, (addr, _, _) in enumerate(ops)}
    back: list[tuple[int, int]] = []
    for i, (_, opcode, operands) in enumerate(ops):
        if opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", operands)
            if target:
                j = address_index.get(int(target.group(1), 16))
                if j is not None and j <= i:
                    back.append((j, i))
    innermost = [
        (lo, hi)
        for lo, hi in back
        if not any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in back)
    ]
    loops, opcodes = [], []
    for lo, hi in innermost:
        body = [op for _, op, _ in ops[lo : hi + 1]]
        loops.append(
            (
                len(body),
                sum(op.startswith("BAR") for op in body),
                sum(op.startswith("SHFL") for op in body),
            )
        )
        opcodes.append(dict(Counter(body)))
    real = [op for _, op, _ in ops if op not in ("NOP",)]
    return Sass(len(real), sum(op.startswith("BAR") for op in real), loops, opcodes)


def _has(opcodes: dict[str, int], *prefixes: str) -> bool:
    return any(op.startswith(prefixes) for op in opcodes)


def _shared_fma(opcodes: dict[str, int]) -> bool:
    """A float32 product without tensor cores: FMA over tiles staged in shared memory."""
    return _has(opcodes, "FFMA") and _has(opcodes, "LDS") and _has(opcodes, "STS")


#: Innermost loops a work model counts separately, recognised by what they execute: per kernel,
#: role -> predicate over the loop's opcodes (the largest matching loop stands for the role).
LOOP_ROLES = {
    "_kmeans_step": {
        # the sums of the previous step's blocks, one channel slice at a time
        "reduce": lambda o: _has(o, "FADD") and _has(o, "LDG") and not _has(o, "HMMA", "HGMMA"),
        # a channel slice's product (the accumulate loop; the label loop's body, which holds
        # the reduce loop and so is no innermost loop, is of the same size and counted as it)
        "slice": lambda o: (_has(o, "HMMA", "HGMMA") or _shared_fma(o)) and _has(o, "STG"),
    },
    "_partition_knn_kernel": {
        # a selection pass over one tile: 32-bit minima, no memory access
        "selection": lambda o: _has(o, "VIMNMX", "IMNMX") and not _has(o, "LDG", "STG"),
        # a merge pass of tile and running top-K: 64-bit key compares (the ``.EX`` half)
        "merge": lambda o: any(".EX" in op for op in o) and not _has(o, "LDG", "STG", "IABS"),
        # channel slices: squared norms (FMA on registers) and products (tensor cores, or in
        # float32 FMA on tiles staged through shared memory)
        "norms": lambda o: _has(o, "LDG") and not _has(o, "HMMA", "HGMMA", "LDGSTS", "LDS"),
        "dot": lambda o: _has(o, "HMMA", "HGMMA", "LDGSTS") or _shared_fma(o),
    },
}


def loop_roles(kernel: str, sass: Sass) -> dict[str, tuple[int, int, int]]:
    """``role -> (instructions, barriers, shuffles)`` of the kernel's recognised loops."""
    found: dict[str, tuple[int, int, int]] = {}
    for role, matches in LOOP_ROLES.get(kernel, {}).items():
        hits = [
            loop for loop, ops in zip(sass.loops, sass.loop_opcodes, strict=True) if matches(ops)
        ]
        if hits:
            found[role] = max(hits)
    return found
