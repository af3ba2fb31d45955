"""Sanity checks of the references themselves against hand-computed values."""

import torch

from dv365_ops import program as P
from dv365_ops import reference as R


def test_jagged_mean_pool_by_hand():
    table = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    ids = torch.tensor([0, 2, 1])
    offsets = torch.tensor([0, 2, 2, 3])
    w = torch.tensor([1.0, 3.0, 0.0])
    out = R.jagged_mean_pool(table, ids, offsets, w)
    torch.testing.assert_close(out, torch.tensor([[4.0, 5.0], [0.0, 0.0], [0.0, 0.0]]))
    out = R.jagged_mean_pool(table, ids, offsets)
    torch.testing.assert_close(out, torch.tensor([[3.0, 4.0], [0.0, 0.0], [3.0, 4.0]]))


def test_token_pool_by_hand():
    x = torch.arange(7.0).reshape(1, 1, 7)
    torch.testing.assert_close(R.token_pool(x, 3), torch.tensor([[[1.0, 4.0, 6.0]]]))


def test_int4_row_by_hand():
    x = torch.tensor([[0.0, 15.0, 7.0, 8.0]])
    packed = R.int4_quantize(x)
    assert packed.shape == (1, 10)
    assert packed[0, :2].tolist() == [0xF0, 0x87]
    torch.testing.assert_close(R.int4_dequantize(packed), x)


def test_slice_program_window_and_action():
    # one user, request at t=1000; events at dt = 1000, 500, 100, 0
    offsets = torch.tensor([0, 4])
    ts = torch.tensor([0, 500, 900, 1000])
    cats = torch.tensor([[0, 1, 0, 0]], dtype=torch.int8)  # action_type
    floats = torch.empty(0, 4)
    prog_i = torch.zeros(2, P.NUM_INT, dtype=torch.int64)
    prog_i[:, list(P.CAT_FIELD)] = -1
    prog_i[:, P.WIN_LO] = 100
    prog_i[:, P.WIN_HI] = P.NO_UPPER_BOUND
    prog_i[1, P.CAT_FIELD[0]] = 0
    prog_i[1, P.CAT_MASK[0]] = 1 << 0
    prog_i[1, P.WIN_HI] = 500
    prog_f = torch.zeros(2, P.NUM_FLOAT, dtype=torch.float64)
    ids = [torch.tensor([10, 11, 12, 13])]
    values, weights, lengths = R.slice_timeline(ids, offsets, ts, cats, floats, torch.tensor([1000]), prog_i, prog_f)
    # slice 0: dt in (100, inf] -> events 0, 1; slice 1: action 0 and dt in (100, 500] -> none (event 1 is action 1)
    assert values.tolist() == [10, 11]
    assert lengths.tolist() == [2, 0]
    assert weights.tolist() == [1.0, 1.0]
