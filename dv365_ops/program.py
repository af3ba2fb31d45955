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
kernels read the mirror ``csrc/dv365_prog.h``, which ``tests/test_program_layout.py`` compares with it.

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
