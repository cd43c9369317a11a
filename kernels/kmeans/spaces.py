"""The search spaces and default configs of the k-means kernels (one per path), and the resident
kernel's tile limits: the data ``python -m autotune --gpu`` searches, kept apart from the kernels
and from the launchers that choose among the paths."""

from __future__ import annotations

from ..tuning import configs, grid

# Every config compiles without register spills for sm_80 and sm_90 under both the oldest
# supported Triton (3.6) and torch 2.14's (3.8) (tests/kernels/test_aot_compile.py, run by CI in
# both); float32 (FMA products) keeps thinner tiles.
IMAGE_SPACE_16BIT = configs(
    ("BLOCK_N", "BLOCK_C", "num_warps", "num_stages"),
    [
        (64, 64, 4, 1),
        (128, 64, 4, 1),
        (128, 64, 8, 1),
        (256, 64, 8, 1),
        (128, 32, 4, 1),
        (256, 32, 8, 1),
    ],
)
IMAGE_SPACE_32BIT = configs(
    ("BLOCK_N", "BLOCK_C", "num_warps", "num_stages"),
    # (32, 16, 4, 1), (64, 16, 4, 1) and any 8-warp config spill under Triton 3.6
    [(32, 32, 4, 1), (64, 32, 4, 1)],
)

INTERPRET_SPACE = [
    {"BLOCK_N": 16, "BLOCK_C": 16, "num_warps": 4, "num_stages": 1},
    {"BLOCK_N": 32, "BLOCK_C": 16, "num_warps": 4, "num_stages": 1},
]


IMAGE_DEFAULT = {
    "e2": {"BLOCK_N": 128, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1},
    "e4": {"BLOCK_N": 64, "BLOCK_C": 32, "num_warps": 4, "num_stages": 1},
}

SPLIT_SPACE = {
    # 64-channel slices ((64, 128, 4, 1) spills on sm_80 under Triton 3.6)
    "e2": grid(BLOCK_N=(32, 64, 128), BLOCK_C=(64,), num_warps=(4,), num_stages=(1,))
    + grid(BLOCK_N=(128, 64), BLOCK_C=(64,), num_warps=(8,), num_stages=(1,)),
    "e4": configs(
        ("BLOCK_N", "BLOCK_C", "num_warps", "num_stages"),
        [(32, 32, 4, 1), (64, 32, 4, 1)],
    ),
}
SPLIT_DEFAULT = {
    "e2": {"BLOCK_N": 128, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1},
    "e4": {"BLOCK_N": 64, "BLOCK_C": 32, "num_warps": 4, "num_stages": 1},
}

#: The resident path holds an image of up to 256 nodes x 192 channels (CViG-Ti's 196 x 192):
#: 96 KiB of fp16/bf16 in shared memory. Wider tiles spill (256 x 256 at 4 warps).
RESIDENT_MAX_ROWS = 256
RESIDENT_MAX_CHANNELS = 192

# 16-bit features on sm_90 only: there the products are wgmma, which read both operand layouts
# of the image from one shared-memory copy. sm_80's mma.sync takes its operands in registers,
# where a 196 x 192 image does not fit (the compiled kernel spills heavily), and Triton 3.6
# spills even on sm_90 (112 B of stack at 4 warps).
RESIDENT_SPACE = {"e2": configs(("BLOCK_C", "num_warps", "num_stages"), [(64, 4, 1), (64, 8, 1)])}
RESIDENT_DEFAULT = {"e2": {"BLOCK_C": 64, "num_warps": 4, "num_stages": 1}}
RESIDENT_INTERPRET_SPACE = [{"BLOCK_C": 16, "num_warps": 4, "num_stages": 1}]
