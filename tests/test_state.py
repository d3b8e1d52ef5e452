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
