"""Layout of a compiled slice program: the small tensors that the slicing kernels evaluate.

A slice program for one timeline is a pair of tensors with one row per slice ``s``:

``prog_i`` int64 ``[S, 10]``
    ``TABLE``                  index of the embedding table the slice pools (into the op's ``tables``/``ids`` lists)
    ``CAT_FIELD{j}, CAT_MASK{j}`` for j = 0, 1, 2: a categorical filter ``(mask >> cats[field, e]) & 1``;
                               ``field = -1`` means no filter. Categorical values lie in [0, 63].
    ``WIN_LO, WIN_HI``         time window: an event is kept iff ``WIN_LO < request_ts[b] - ts[e] <= WIN_HI``
                               (seconds; ``WIN_HI = INT64_MAX`` for no upper bound; ``WIN_LO`` is the gap,
                               e.g. 86 400 for the paper's 24 h cut).
    ``FLAGS``                  bit 0 ``WEIGHTED`` (debiased watch score), bit 1 ``DWELL_FILTER``,
                               bit 2 ``RATIO_FILTER``; ``ALL_FLAGS`` is their union.

``prog_f`` float64 ``[S, 7]``
    ``DWELL_LO, DWELL_HI``     kept iff ``DWELL_LO <= dwell <= DWELL_HI`` (when ``DWELL_FILTER``)
    ``RATIO_LO, RATIO_HI``     kept iff ``RATIO_LO <= dwell / duration ** BETA <= RATIO_HI`` (when ``RATIO_FILTER``)
    ``BETA, GAMMA, S0``        when ``WEIGHTED``: ``s = log1p(dwell) / log1p(GAMMA * duration)``; kept iff the
                               denominator is > 0 and ``s > S0``; the event's weight is ``min(s, MAX_SCORE)``
                               (else 1).

Bounds are inclusive. An open bound is compiled as the adjacent float64 (``math.nextafter``): the dwell is a
float32 and the ratio a float64, and no float64 lies between a bound and its neighbour, so ``dwell < 3`` and
``dwell <= nextafter(3, -inf)`` keep exactly the same events (``dv365.spec`` writes them ``"[0, 3)"``).

The ratio and the score are computed in float64 from the float32 fields (so that every backend agrees on
which side of a bound an event falls), comparisons follow IEEE rules (NaN fails every bound), and the
weight is rounded to float32. Float fields: ``floats[0]`` video_duration, ``floats[1]`` dwell_time, seconds; a
timeline without them passes ``floats`` of shape ``[0, N]`` and its program may not use dwell, ratio or
weight.

This module is the one definition of the layout: the Triton kernels read it from here; the C++ and CUDA
kernels read the mirror ``csrc/dv365_prog.h``, which ``tests/test_program_layout.py`` compares with it. The
same holds for the plan's layout (below).

Fields outside their domain are *unknown*, whether the caller validated them or not: a dwell that is NaN,
negative or infinite, and a duration that is NaN, negative, infinite or 0, are read as NaN. So an event with an
unknown dwell is in no dwell, ratio or weighted slice; one with an unknown duration is in no ratio or weighted
slice (its dwell slices are unaffected). A duration of 0 (a photo) has no watch ratio (``dwell / 0``) and no
debiased score (the denominator ``log1p(0)`` is 0): photos enter unfiltered and dwell slices only. A duration
so short that ``s`` explodes (``1e-45`` s gives ``s`` near ``1e45``) is capped by ``MAX_SCORE`` = 2^16, far above
any real score (``s`` reaches 2^16 only when ``GAMMA * duration`` is below about 2e-4 while the dwell is long),
so one bad event cannot overflow a slice's ``Σ w·e`` in float32.
"""

TABLE = 0
CAT_FIELD = (1, 3, 5)
CAT_MASK = (2, 4, 6)
WIN_LO = 7
WIN_HI = 8
FLAGS = 9
NUM_INT = 10

DWELL_LO = 0
DWELL_HI = 1
RATIO_LO = 2
RATIO_HI = 3
BETA = 4
GAMMA = 5
S0 = 6
NUM_FLOAT = 7

WEIGHTED = 1
DWELL_FILTER = 2
RATIO_FILTER = 4
ALL_FLAGS = WEIGHTED | DWELL_FILTER | RATIO_FILTER

NUM_CAT_FILTERS = 3
MAX_CAT_VALUE = 63
NO_UPPER_BOUND = 2**63 - 1

FLOAT_DURATION = 0
FLOAT_DWELL = 1

MAX_SCORE = 65536.0


# ---- the plan ----------------------------------------------------------------------------------------------------
# ``torch.ops.dv365.plan_slices(prog_i, prog_f, num_tables, cat_fields, float_fields) -> (plan_i, plan_f)`` checks a
# program's entries against a timeline with that many tables, categorical rows and float rows (the slicing ops'
# messages) and plans it: the one grouping that every backend evaluates (``csrc/slice_plan.h`` builds it; the CPU
# kernels and the CUDA host call the builder themselves, keeping one plan per program).
#
# Groups: slices that keep the same events up to their window (same table and flags, the same categorical filters
# once the filters on one field are ANDed whichever column holds them, the same float parameters their flags read,
# bit for bit). A group's predicate is its leader's row (its first slice). Groups are numbered by table, then by
# leader.
#
# ``plan_i`` int64 1-D: a header of ``PLAN_HEADER`` entries, then sections; header entry ``PLAN_<X>_AT`` holds the
# index where section X starts.
#     header  ``PLAN_NUM_SLICES`` S, ``PLAN_NUM_TABLES`` T, ``PLAN_NUM_GROUPS`` G, ``PLAN_NUM_BOUNDS`` K,
#             ``PLAN_NUM_CAT_FIELDS`` NF, ``PLAN_NUM_WEIGHTED``, ``PLAN_NUM_BETAS``, ``PLAN_NUM_GAMMAS``,
#             ``PLAN_WORDS`` W = max(1, ceil(G / 64)) (64-bit words of a set of groups); the rest 0
#     SLICE_GROUP   [S]        each slice's group
#     GROUPS        [G, GROUP_COLS]  per group: ``GROUP_TABLE``, ``GROUP_LEADER`` (its first slice),
#                              ``GROUP_FLAGS``, ``GROUP_RANK`` (among its table's groups), ``GROUP_WSLOT`` (among the
#                              weighted groups, -1 if unweighted), ``GROUP_BETA`` / ``GROUP_GAMMA`` (index into
#                              BETAS / GAMMAS, -1 without a ratio filter / weight), ``GROUP_FIRST``, ``GROUP_COUNT``
#                              (its slices are GROUP_SLICES[first : first + count], ascending)
#     GROUP_SLICES  [S]        the slices group by group (so table by table)
#     TABLE_GROUPS  [T + 1]    table t's groups are [TABLE_GROUPS[t], TABLE_GROUPS[t + 1])
#     TABLE_SLICES  [T + 1]    table t's slices are GROUP_SLICES[TABLE_SLICES[t] : TABLE_SLICES[t + 1]]
#     BOUNDS        [K]        the distinct window bounds (WIN_LO and WIN_HI of every slice), ascending
#     COVERED       [K + 1]    1 where some slice's window covers segment j: ``request_ts - ts`` in
#                              (BOUNDS[j - 1], BOUNDS[j]] (j = 0: <= BOUNDS[0]; j = K: > BOUNDS[K - 1]); slice s
#                              covers j iff WIN_LO[s] <= BOUNDS[j - 1] and BOUNDS[j] <= WIN_HI[s]
#     CAT_FIELDS    [NF]       the categorical fields some group filters on, ascending
#     CAT_PASS      [NF, PLAN_CAT_VALUES, W]  bit g % 64 of word g // 64 (an int64 holding the 64 bits) is set iff
#                              group g accepts the value on the field (a group not filtering on it accepts all)
#     FLOAT_GROUPS  [W]        the groups with flags (dwell, ratio or weight), as a bit set
# ``plan_f`` float64 1-D: BETAS (the distinct BETA of the ratio groups) from ``plan_i[PLAN_BETAS_AT]``, GAMMAS (of
# the weighted groups) from ``plan_i[PLAN_GAMMAS_AT]``, in order of first use by the groups.
PLAN_NUM_SLICES = 0
PLAN_NUM_TABLES = 1
PLAN_NUM_GROUPS = 2
PLAN_NUM_BOUNDS = 3
PLAN_NUM_CAT_FIELDS = 4
PLAN_NUM_WEIGHTED = 5
PLAN_NUM_BETAS = 6
PLAN_NUM_GAMMAS = 7
PLAN_WORDS = 8
PLAN_SLICE_GROUP_AT = 16
PLAN_GROUPS_AT = 17
PLAN_GROUP_SLICES_AT = 18
PLAN_TABLE_GROUPS_AT = 19
PLAN_TABLE_SLICES_AT = 20
PLAN_BOUNDS_AT = 21
PLAN_COVERED_AT = 22
PLAN_CAT_FIELDS_AT = 23
PLAN_CAT_PASS_AT = 24
PLAN_FLOAT_GROUPS_AT = 25
PLAN_BETAS_AT = 26
PLAN_GAMMAS_AT = 27
PLAN_HEADER = 32

GROUP_TABLE = 0
GROUP_LEADER = 1
GROUP_FLAGS = 2
GROUP_RANK = 3
GROUP_WSLOT = 4
GROUP_BETA = 5
GROUP_GAMMA = 6
GROUP_FIRST = 7
GROUP_COUNT = 8
GROUP_COLS = 9

PLAN_CAT_VALUES = 64


def plan_sections(plan_i, plan_f=None) -> dict:
    """The sections of a plan (``plan_i`` and ``plan_f`` from ``dv365::plan_slices``, CPU tensors) by name, as views:
    ``slice_group``, ``groups`` ``[G, GROUP_COLS]``, ``group_slices``, ``table_groups``, ``table_slices``, ``bounds``,
    ``covered``, ``cat_fields``, ``cat_pass`` ``[NF, PLAN_CAT_VALUES, W]``, ``float_groups`` and, with ``plan_f``,
    ``betas`` and ``gammas``."""
    h = plan_i[:PLAN_HEADER].tolist()
    s, t, g, k, nf, w = (h[PLAN_NUM_SLICES], h[PLAN_NUM_TABLES], h[PLAN_NUM_GROUPS], h[PLAN_NUM_BOUNDS],
                         h[PLAN_NUM_CAT_FIELDS], h[PLAN_WORDS])

    def at(entry, length):
        return plan_i[h[entry] : h[entry] + length]

    out = {
        "slice_group": at(PLAN_SLICE_GROUP_AT, s),
        "groups": at(PLAN_GROUPS_AT, g * GROUP_COLS).view(g, GROUP_COLS),
        "group_slices": at(PLAN_GROUP_SLICES_AT, s),
        "table_groups": at(PLAN_TABLE_GROUPS_AT, t + 1),
        "table_slices": at(PLAN_TABLE_SLICES_AT, t + 1),
        "bounds": at(PLAN_BOUNDS_AT, k),
        "covered": at(PLAN_COVERED_AT, k + 1),
        "cat_fields": at(PLAN_CAT_FIELDS_AT, nf),
        "cat_pass": at(PLAN_CAT_PASS_AT, nf * PLAN_CAT_VALUES * w).view(nf, PLAN_CAT_VALUES, w),
        "float_groups": at(PLAN_FLOAT_GROUPS_AT, w),
    }
    if plan_f is not None:
        out["betas"] = plan_f[h[PLAN_BETAS_AT] : h[PLAN_BETAS_AT] + h[PLAN_NUM_BETAS]]
        out["gammas"] = plan_f[h[PLAN_GAMMAS_AT] : h[PLAN_GAMMAS_AT] + h[PLAN_NUM_GAMMAS]]
    return out
