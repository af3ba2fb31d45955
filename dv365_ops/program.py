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
                               bit 2 ``RATIO_FILTER``.

``prog_f`` float64 ``[S, 7]``
    ``DWELL_LO, DWELL_HI``     kept iff ``DWELL_LO <= dwell <= DWELL_HI`` (when ``DWELL_FILTER``)
    ``RATIO_LO, RATIO_HI``     kept iff ``RATIO_LO <= dwell / duration ** BETA <= RATIO_HI`` (when ``RATIO_FILTER``)
    ``BETA, GAMMA, S0``        when ``WEIGHTED``: ``s = log1p(dwell) / log1p(GAMMA * duration)``; kept iff the
                               denominator is > 0 and ``s > S0``; the event's weight is ``s`` (else 1).

The ratio and the score are computed in float64 from the float32 fields (so that every backend agrees on
which side of a bound an event falls), comparisons follow IEEE rules (NaN fails every bound), and the
weight is rounded to float32. Float fields: ``floats[0]`` video_duration, ``floats[1]`` dwell_time; a
timeline without them passes ``floats`` of shape ``[0, N]`` and its program may not use dwell, ratio or
weight. ``csrc/dv365.h`` mirrors these indices for the kernels.
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

NUM_CAT_FILTERS = 3
MAX_CAT_VALUE = 63
NO_UPPER_BOUND = 2**63 - 1

FLOAT_DURATION = 0
FLOAT_DWELL = 1
