"""Server update rules on hand-computed tensors: 2 clients, 2 rounds."""

import pytest
import torch

from fedlib.client import ClientResult
from fedlib.server import init_server, server_update
from fedlib.strategies import STRATEGIES, get_strategy, server_rule, weighted_mean

X = {"w": torch.tensor([1.0, 2.0])}
# client 1: y=[2, 2], n=1; client 2: y=[4, 0], n=3 -> mean [3.5, 0.5], delta [2.5, -1.5]
R1 = [
    ClientResult(0, 1, 1, 0.1, {"w": torch.tensor([2.0, 2.0])}),
    ClientResult(1, 3, 1, 0.1, {"w": torch.tensor([4.0, 0.0])}),
]


def _step(name, state, results, **hp):
    s = get_strategy(name)
    return server_update(state, results, s, {**s.defaults, **hp}, num_clients=10)


def test_weighted_mean_uses_example_counts():
    assert torch.allclose(weighted_mean([r.shared for r in R1], [1, 3])["w"], torch.tensor([3.5, 0.5]))


def test_fedavg_is_the_weighted_mean():
    assert torch.allclose(
        _step("fedavg", init_server(get_strategy("fedavg"), X, {}), R1).shared["w"], torch.tensor([3.5, 0.5])
    )


def test_fedavgm_two_rounds():
    s0 = init_server(get_strategy("fedavgm"), X, {})
    s1 = _step("fedavgm", s0, R1)  # m = d = [2.5, -1.5]; x = [3.5, 0.5]
    assert torch.allclose(s1.shared["w"], torch.tensor([3.5, 0.5]))
    r2 = [ClientResult(0, 1, 1, 0.1, {"w": torch.tensor([4.5, 0.5])})]  # d2 = [1, 0]
    s2 = _step("fedavgm", s1, r2)  # m = 0.9 [2.5, -1.5] + [1, 0] = [3.25, -1.35]
    assert torch.allclose(s2.shared["w"], torch.tensor([3.5 + 3.25, 0.5 - 1.35]))


def test_fedadam_first_step_is_eta_times_sign():
    s1 = _step("fedadam", init_server(get_strategy("fedadam"), X, {}), R1)
    # m = 0.1 d, v = 0.01 d^2 -> m / sqrt(v) = sign(d); eta = 0.1
    assert torch.allclose(s1.shared["w"], torch.tensor([1.1, 1.9]))
    assert torch.allclose(s1.opt["m.w"], torch.tensor([0.25, -0.15])) and torch.allclose(
        s1.opt["v.w"], torch.tensor([0.0625, 0.0225])
    )


def test_fedyogi_and_fedadagrad():
    y = _step("fedyogi", init_server(get_strategy("fedyogi"), X, {}), R1)
    want = torch.tensor([1 + 0.01 * 0.25 / (0.25 + 1e-3), 2 - 0.01 * 0.15 / (0.15 + 1e-3)])
    assert torch.allclose(y.shared["w"], want)
    # second Yogi round: v <- v - (1 - b2) d^2 sign(v - d^2), with v = 0.01 d1^2 and d2 = [0.5, 0.5]
    y2 = _step("fedyogi", y, [ClientResult(0, 1, 1, 0.1, {"w": y.shared["w"] + 0.5})])
    v = torch.tensor([0.0625, 0.0225]) - 0.01 * 0.25 * torch.sign(torch.tensor([0.0625, 0.0225]) - 0.25)
    assert torch.allclose(y2.opt["v.w"], v)
    a = _step("fedadagrad", init_server(get_strategy("fedadagrad"), X, {}), R1)
    assert torch.allclose(a.shared["w"], torch.tensor([1.1, 1.9]))  # m = d, v = d^2


def test_scaffold_global_control_update():
    s0 = init_server(get_strategy("scaffold"), X, {})
    assert torch.equal(s0.controls["c"]["w"], torch.zeros(2))
    res = [
        ClientResult(0, 1, 1, 0.1, {"w": torch.tensor([2.0, 2.0])}, {"w": torch.tensor([1.0, 0.0])}),
        ClientResult(1, 3, 1, 0.1, {"w": torch.tensor([4.0, 0.0])}, {"w": torch.tensor([3.0, 2.0])}),
    ]
    s1 = _step("scaffold", s0, res)
    assert torch.allclose(s1.shared["w"], torch.tensor([3.5, 0.5]))
    assert torch.allclose(s1.controls["c"]["w"], (2 / 10) * torch.tensor([2.0, 1.0]))  # c += |S|/N mean(dc)


def test_no_results_keeps_state():
    s0 = init_server(get_strategy("fedadam"), X, {})
    s1 = _step("fedadam", s0, [])
    assert s1.round == 1 and torch.equal(s1.shared["w"], X["w"])


def test_every_strategy_is_documented_and_known():
    from fedlib.config import STRATEGY_NAMES

    assert set(STRATEGIES) == set(STRATEGY_NAMES)
    assert all(s.doc for s in STRATEGIES.values())
    with pytest.raises(KeyError, match="valid strategies"):
        get_strategy("fedsgd")
    with pytest.raises(KeyError):
        server_rule("nope", X, X, {}, {})
