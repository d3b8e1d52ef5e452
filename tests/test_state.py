"""Per-sample state storage: ids, batch reads/writes, memory, checkpoints."""
import math

import pytest
import torch

from open_clip_patch.state import PerSampleState, column_names


def make_state(data_size=10, dtype=torch.float32):
    return PerSampleState(data_size, {"log_u_image": -math.inf, "tau_image": 0.03}, dtype=dtype)


def test_columns_start_at_their_initial_values_and_memory_is_reported():
    state = make_state()
    assert torch.all(state.column("log_u_image") == -math.inf)
    assert torch.allclose(state.column("tau_image"), torch.full((10,), 0.03))
    assert state.nbytes() == 10 * 2 * 4
    assert make_state(1000, torch.float64).nbytes() == 1000 * 2 * 8
    assert column_names(["log_u", "tau"]) == ["log_u_image", "log_u_text", "tau_image",
                                              "tau_text"]


def test_write_changes_only_the_given_rows_and_read_returns_them():
    state = make_state()
    ids = torch.tensor([7, 2])
    rows = torch.tensor([[1.0, 0.1], [2.0, 0.2]], dtype=torch.float64)
    state.write(ids, rows)
    assert torch.equal(state.read(ids, dtype=torch.float64), rows.float().double())
    others = torch.tensor([i for i in range(10) if i not in (7, 2)])
    assert torch.equal(state.read(others), make_state().read(others))
    assert state.unpack(state.read(ids))["tau_image"].tolist() == pytest.approx([0.1, 0.2])
    assert torch.equal(state.pack(state.unpack(state.read(ids))), state.read(ids))


@pytest.mark.parametrize("ids,message", [
    (torch.tensor([3, 10]), r"sample id 10 is outside \[0, data_size=10\)"),
    (torch.tensor([-2]), r"sample id -2"),
    (torch.tensor([1.0]), "integer"),
    (torch.tensor([[1, 2]]), "1-D"),
])
def test_bad_ids_are_rejected(ids, message):
    with pytest.raises(ValueError, match=message):
        make_state().read(ids)


def test_state_dict_round_trip_and_mismatches():
    state = make_state()
    state.write(torch.tensor([4]), torch.tensor([[5.0, 0.5]]))
    copy = make_state()
    copy.load_state_dict(state.state_dict())
    assert torch.equal(copy.values, state.values)
    with pytest.raises(ValueError, match="data_size=12"):
        make_state(12).load_state_dict(state.state_dict())
    other = PerSampleState(10, {"log_u_text": 0.0, "tau_image": 0.0})
    with pytest.raises(ValueError, match="columns"):
        other.load_state_dict(state.state_dict())
    with pytest.raises(ValueError, match="data_size"):
        PerSampleState(0, {"a": 0.0})


def test_shards_hold_their_block_and_refuse_other_ids():
    from open_clip_patch.state import block_of

    shards = [PerSampleState(10, {"a": 0.0, "b": 1.0}, shard=(r, 4)) for r in range(4)]
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [block_of(r, 4, 5) for r in range(4)] == [(0, 2), (2, 4), (4, 5), (5, 5)]
    assert sum(s.nbytes() for s in shards) == PerSampleState(10, {"a": 0.0, "b": 1.0}).nbytes()
    shards[1].write(torch.tensor([4, 3]), torch.tensor([[4.0, 4.0], [3.0, 3.0]]))
    assert shards[1].values[:, 0].tolist() == [3.0, 4.0, 0.0]
    assert shards[1].owner_of(torch.tensor([0, 3, 9])).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match=r"sample id 7 is not in this shard's ids \[3, 6\)"):
        shards[1].read(torch.tensor([7]))
    whole = make_state()   # a whole table (replicated checkpoint) loads into a shard as its block
    whole.values[:, 0] = torch.arange(10.0)
    shard = PerSampleState(10, {"log_u_image": 0.0, "tau_image": 0.0}, shard=(2, 4))
    shard.load_state_dict(whole.state_dict())
    assert shard.values[:, 0].tolist() == [6.0, 7.0, 8.0]


def test_blocks_share_shuffled_batches_evenly():
    """Batches of a shuffled id space spread over the blocks: on CC3M's id space, global batches
    of 5,120 ids at K = 8 give every owner within ±15% of b rows on average (a hand-computed
    binomial: sd sqrt(640·7/8) ≈ 24 rows, so ±15% of 640 is > 4 sd)."""
    from open_clip_patch.state import owner_of

    gen = torch.Generator().manual_seed(0)
    data_size, world, batch = 3_318_333, 8, 5_120
    for _ in range(5):
        ids = torch.randint(0, data_size, (batch,), generator=gen)
        counts = torch.bincount(owner_of(ids, world, data_size), minlength=world)
        assert counts.min() >= 0.85 * batch / world and counts.max() <= 1.15 * batch / world
