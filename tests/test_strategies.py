"""Server update rules on hand-computed tensors: 2 clients, 2 rounds."""

import numpy as np
import pytest
import torch

from fedlib.client import ClientResult
from fedlib.config import ConfigError, TrainConfig
from fedlib.quadratic import Quadratic, run_quadratic
from fedlib.server import server_update, weighted_mean
from fedlib.strategies import STRATEGIES, get_strategy, strategy_config

X = {"w": torch.tensor([1.0, 2.0])}
# client 1: y=[2, 2], n=1; client 2: y=[4, 0], n=3 -> mean [3.5, 0.5], delta [2.5, -1.5]
R1 = [
    ClientResult(0, 1, 1, 0.1, {"w": torch.tensor([2.0, 2.0])}),
    ClientResult(1, 3, 1, 0.1, {"w": torch.tensor([4.0, 0.0])}),
]


def _step(name, state, results, **hp):
    return server_update(state, results, get_strategy(strategy_config(name, **hp)), num_clients=10)


def init_server(name):
    return get_strategy(name).init_server(X)


def test_weighted_mean_uses_example_counts():
    assert torch.allclose(weighted_mean([r.shared for r in R1], [1, 3])["w"], torch.tensor([3.5, 0.5]))


def test_fedavg_is_the_weighted_mean():
    assert torch.allclose(_step("fedavg", init_server("fedavg"), R1).shared["w"], torch.tensor([3.5, 0.5]))


def test_fedavgm_two_rounds():
    s0 = init_server("fedavgm")
    s1 = _step("fedavgm", s0, R1)  # m = d = [2.5, -1.5]; x = [3.5, 0.5]
    assert torch.allclose(s1.shared["w"], torch.tensor([3.5, 0.5]))
    r2 = [ClientResult(0, 1, 1, 0.1, {"w": torch.tensor([4.5, 0.5])})]  # d2 = [1, 0]
    s2 = _step("fedavgm", s1, r2)  # m = 0.9 [2.5, -1.5] + [1, 0] = [3.25, -1.35]
    assert torch.allclose(s2.shared["w"], torch.tensor([3.5 + 3.25, 0.5 - 1.35]))


def test_fedadam_first_step_is_the_bias_corrected_eta_times_sign():
    s1 = _step("fedadam", init_server("fedadam"), R1)
    # m = 0.1 d, v = 0.01 d^2 -> m / (sqrt(v) + tau) = d / (|d| + 10 tau); eta_1 = 0.1 sqrt(1 - 0.99^2) / (1 - 0.9^2)
    eta = 0.1 * (1 - 0.99**2) ** 0.5 / (1 - 0.9**2)
    want = torch.tensor([1 + eta * 2.5 / (2.5 + 1e-2), 2 - eta * 1.5 / (1.5 + 1e-2)])
    assert torch.allclose(s1.shared["w"], want)
    assert torch.allclose(s1.opt["m.w"], torch.tensor([0.25, -0.15])) and torch.allclose(
        s1.opt["v.w"], torch.tensor([0.0625, 0.0225])
    )


def test_fedyogi_and_fedadagrad():
    y = _step("fedyogi", init_server("fedyogi"), R1)
    want = torch.tensor([1 + 0.01 * 0.25 / (0.25 + 1e-3), 2 - 0.01 * 0.15 / (0.15 + 1e-3)])
    assert torch.allclose(y.shared["w"], want)
    # second Yogi round: v <- v - (1 - b2) d^2 sign(v - d^2), with v = 0.01 d1^2 and d2 = [0.5, 0.5]
    y2 = _step("fedyogi", y, [ClientResult(0, 1, 1, 0.1, {"w": y.shared["w"] + 0.5})])
    v = torch.tensor([0.0625, 0.0225]) - 0.01 * 0.25 * torch.sign(torch.tensor([0.0625, 0.0225]) - 0.25)
    assert torch.allclose(y2.opt["v.w"], v)
    a = _step("fedadagrad", init_server("fedadagrad"), R1)
    want = torch.tensor([1 + 0.1 * 2.5 / (2.5 + 1e-3), 2 - 0.1 * 1.5 / (1.5 + 1e-3)])  # m = d, v = d^2, tau 1e-3
    assert torch.allclose(a.shared["w"], want)


def test_scaffold_global_control_update():
    s0 = init_server("scaffold")
    assert torch.equal(s0.controls["c"]["w"], torch.zeros(2))
    res = [
        ClientResult(0, 1, 1, 0.1, {"w": torch.tensor([2.0, 2.0])}, {"w": torch.tensor([1.0, 0.0])}),
        ClientResult(1, 3, 1, 0.1, {"w": torch.tensor([4.0, 0.0])}, {"w": torch.tensor([3.0, 2.0])}),
    ]
    s1 = _step("scaffold", s0, res)
    assert torch.allclose(s1.shared["w"], torch.tensor([3.5, 0.5]))
    assert torch.allclose(s1.controls["c"]["w"], torch.tensor([2.5, 1.5]))  # (1 [1, 0] + 3 [3, 2]) / 4: sizes weigh
    again = [ClientResult(1, 3, 1, 0.1, {"w": torch.tensor([4.0, 0.0])}, {"w": torch.tensor([-1.0, 2.0])})]
    s2 = _step("scaffold", s1, again)  # client 1 again: c = (1 c_0 + 3 (c_1 + dc_1)) / 4, no new size counted
    assert torch.allclose(s2.controls["c"]["w"], (torch.tensor([1.0, 0.0]) + 3 * torch.tensor([2.0, 4.0])) / 4)


def test_scaffold_beats_fedavg_on_the_quadratic_as_its_paper_says():
    """Karimireddy et al. 2020: with heterogeneous clients, local SGD steps and partial participation, FedAvg's
    iterate stops at a drifted point while SCAFFOLD's corrected steps reach the (size-weighted) optimum."""
    kw = dict(rounds=60, clients_per_round=3, steps=10, lr=0.05, optimizer="sgd")
    gaps = {
        name: np.array([run_quadratic(Quadratic(s), get_strategy(name), **kw)["gap"][-10:].mean() for s in range(6)])
        for name in ("fedavg", "scaffold")
    }
    assert (gaps["scaffold"] < gaps["fedavg"] / 20).all(), gaps  # measured: median 0.010 against 3.9
    exact = run_quadratic(Quadratic(0), get_strategy("scaffold"), **{**kw, "clients_per_round": 10}, noise=0.0)
    assert exact["gap"][-1] < 1e-6  # without gradient noise and with every client: the optimum itself


def test_no_results_keeps_state():
    s0 = init_server("fedadam")
    s1 = _step("fedadam", s0, [])
    assert s1.round == 1 and torch.equal(s1.shared["w"], X["w"])


def test_every_strategy_is_registered_documented_and_typed():
    assert list(STRATEGIES) == [
        "fedavg",
        "fedavg_selected",
        "shallow",
        "lora",
        "fedprox",
        "scaffold",
        "local_only",
        "fedpeptao",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
    ]
    for name, cls in STRATEGIES.items():
        assert cls.doc and cls.name == name and get_strategy(name).cfg.name == name
    with pytest.raises(ConfigError, match=r"strategy.name='fedsgd' is invalid: one of \['fedavg'"):
        get_strategy("fedsgd")


def test_strategy_hyper_parameters_are_typed_and_named_in_errors():
    assert strategy_config("fedadam", server_lr=0.3).server_lr == 0.3
    with pytest.raises(ConfigError, match=r"strategy 'fedavg' has no hyper-parameter\(s\) \['server_tau'\]"):
        strategy_config("fedavg", server_tau=1.0)
    with pytest.raises(ConfigError, match=r"strategy.server_tau=0.0 is invalid: must be > 0"):
        strategy_config("fedyogi", server_tau=0.0)
    with pytest.raises(ConfigError, match=r"strategy.mu='big' is invalid: expected float"):
        strategy_config("fedprox", mu="big")
    with pytest.raises(ConfigError, match="needs a FedAvgConfig, got FedAdamConfig"):  # no posing as another
        get_strategy("fedavg").__class__(strategy_config("fedadam"))


def test_server_beta_reaches_the_step():
    a = _step("fedadam", init_server("fedadam"), R1, server_beta1=0.5)
    assert torch.allclose(a.opt["m.w"], 0.5 * torch.tensor([2.5, -1.5]))


def test_local_rules_are_the_strategies_own_typed_fields():
    train = TrainConfig(lr=0.04)
    assert get_strategy("lora").client_train(train).lr == 5e-3
    assert get_strategy(strategy_config("lora", lr=None)).client_train(train) == train
    assert get_strategy("fedavg").client_train(train) == train
    sgd = get_strategy(strategy_config("scaffold", lr=0.5)).client_train(train)  # SCAFFOLD as published
    assert (sgd.optimizer, sgd.lr, sgd.head_lr, sgd.max_grad_norm, sgd.weight_decay) == ("sgd", 0.5, 0.5, 0.0, 0.0)
    assert get_strategy(strategy_config("scaffold", local_optimizer="adamw")).client_train(train) == train


@pytest.mark.parametrize(
    "name, flower, ours",
    [
        ("FedAvgM", {"server_momentum": 0.9, "server_learning_rate": 0.5}, {"server_momentum": 0.9, "server_lr": 0.5}),
        ("FedAdam", {}, {}),
        ("FedYogi", {}, {}),
        ("FedAdagrad", {}, {}),
    ],
)
def test_server_optimisers_match_flowers_strategies_of_the_same_name(name, flower, ours, monkeypatch):
    """Flower's strategy and ours fed the same initial weights and the same two rounds of client replies."""
    pytest.importorskip("flwr")
    import numpy as np
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import strategy as flwr_strategy
    from flwr.supercore.task_identity import TaskIdentity

    for field in ("_run_id", "_node_id", "_task_id"):  # what a message needs outside a Flower run
        monkeypatch.setattr(TaskIdentity, field, 0)

    theirs = getattr(flwr_strategy, name)(**flower)
    mine = get_strategy(strategy_config(name.lower(), **ours))
    x0 = {"w": np.array([1.0, -2.0, 0.5])}
    state = mine.init_server({k: torch.tensor(v) for k, v in x0.items()})
    current = x0
    rounds = [[(np.array([1.5, -1.0, 0.0]), 1), (np.array([0.0, -3.0, 1.5]), 3)], [(np.array([2.0, -1.0, 1.0]), 2)]]
    for t, replies in enumerate(rounds, start=1):
        if name == "FedAvgM":
            theirs.current_arrays = theirs.current_arrays or ArrayRecord(
                {k: torch.tensor(v) for k, v in current.items()}
            )
        else:
            theirs.current_arrays = dict(current)
        msgs = [
            Message(
                RecordDict(
                    {"arrays": ArrayRecord({"w": torch.tensor(y)}), "metrics": MetricRecord({"num-examples": n})}
                ),
                dst_node_id=0,
                message_type="train",
            )
            for y, n in replies
        ]
        arrays, _ = theirs.aggregate_train(t, msgs)
        current = {k: a.numpy() for k, a in arrays.items()}
        results = [ClientResult(i, n, 1, 0.1, {"w": torch.tensor(y)}) for i, (y, n) in enumerate(replies)]
        state = server_update(state, results, mine, num_clients=4)
        assert np.allclose(state.shared["w"].numpy(), current["w"], atol=1e-7), (t, state.shared["w"], current["w"])
