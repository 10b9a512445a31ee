"""The Learner: learning on real frames, target and temperature updates, checkpoints, exports."""

from __future__ import annotations

import dataclasses
import io
import pickle

import numpy as np
import pytest
import torch
from learner_device import Learner

from common.batch import Batch
from common.config import Config, debug
from common.envs import make_env
from common.probe import FILTER_MODULES
from learner.learner import MODEL_KEYS, SAC_KEYS, polyak_update

pytestmark = pytest.mark.unit

torch.set_num_threads(1)  # tiny networks: a second thread only adds contention on a shared 2-core box
CFG = debug()
T = CFG.model.sequence_length + 1


def with_(cfg: Config, **groups: dict) -> Config:
    """cfg with fields of its groups replaced: with_(cfg, sac={"gamma": 0.0})."""
    return dataclasses.replace(cfg, **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in groups.items()})


@pytest.fixture(scope="module")
def cheetah() -> tuple[Batch, int]:
    """8 windows of real cheetah_run frames: one episode cut into consecutive windows, the first
    starting at the reset frame, the second padded at its start the way replay pads."""
    env = make_env("cheetah_run", seed=0)
    rng = np.random.default_rng(0)
    frames, actions, rewards = [env.reset()], [], []
    for _ in range(8 * T):
        action = rng.uniform(-1, 1, env.action_dim).astype(np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        assert not (terminated or truncated)
        frames.append(obs), actions.append(action), rewards.append(reward)
    env.close()
    starts = [0] + [i * T for i in range(1, 8)]
    obs = torch.from_numpy(np.stack([frames[s:s + T] for s in starts]))
    action = torch.from_numpy(np.stack([actions[s:s + T - 1] for s in starts]))
    reward = torch.tensor(np.stack([rewards[s:s + T - 1] for s in starts]), dtype=torch.float32)
    first = torch.zeros(8, T, dtype=torch.bool)
    first[0, 0] = True
    pad = 3  # window 1: three copies of the first frame, then the episode's first frames
    obs[1] = torch.cat([obs[0, :1].expand(pad, 3, 64, 64), obs[0, :T - pad]])
    action[1] = torch.cat([torch.zeros(pad, env.action_dim), action[0, :T - 1 - pad]])
    reward[1] = torch.cat([torch.zeros(pad), reward[0, :T - 1 - pad]])
    first[1, pad] = True
    return Batch(obs, action, reward, torch.zeros(8, T - 1), first), env.action_dim


def _params(learner: Learner) -> dict[str, torch.Tensor]:
    named = {}
    for name in ("model", "actor", "critic", "critic_target"):
        named.update({f"{name}.{k}": v.clone() for k, v in getattr(learner, name).state_dict().items()})
    named["log_alpha"] = learner.log_alpha.detach().clone()
    return named


def _floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _random_batch(b: int, action_dim: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randint(0, 256, (b, T, 3, 64, 64), dtype=torch.uint8, generator=g),
                 torch.rand(b, T - 1, action_dim, generator=g) * 2 - 1, torch.randn(b, T - 1, generator=g),
                 torch.zeros(b, T - 1), torch.zeros(b, T, dtype=torch.bool))


def test_model_updates_lower_reconstruction_error(cheetah: tuple[Batch, int]) -> None:
    batch, action_dim = cheetah
    learner = Learner(CFG, action_dim, seed=0)
    batch = batch.head(CFG.model.batch_size)
    first = learner.update_model(batch)
    for _ in range(298):
        learner.update_model(batch)
    last = learner.update_model(batch)
    print("image mse", first["model/image_mse"], "->", last["model/image_mse"])
    assert last["model/image_mse"] < 0.5 * first["model/image_mse"]
    assert last["model/loss"] < first["model/loss"]
    assert learner.model_updates == 300


def test_critic_regresses_onto_a_known_reward(cheetah: tuple[Batch, int]) -> None:
    batch, action_dim = cheetah
    # gamma = 0: the target is r[tau] itself, here a known function of a[tau]. A wider, faster critic
    # than debug's so that 150 steps suffice despite the noisy posterior samples it sees.
    cfg = with_(CFG, sac={"gamma": 0.0, "hidden_dim": 64, "critic_lr": 3e-3})
    learner = Learner(cfg, action_dim, seed=0)
    learner.model.requires_grad_(False)  # a fixed model: the critic alone regresses (Adam skips grad-less params)
    reward = batch.reward.clone()
    reward[:, -1] = 2.0 * batch.action[:, -1, 0] - batch.action[:, -1, 1] + 1.0
    batch = batch._replace(reward=reward)
    first = _floats(learner.update(batch))
    losses = [float(learner.update(batch)["critic/loss"]) for _ in range(150)]
    print("critic loss", first["critic/loss"], "->", losses[-10:])
    assert np.mean(losses[-10:]) < 0.1 * first["critic/loss"]
    assert first["critic/target"] == pytest.approx(reward[:, -1].mean().item(), rel=1e-5)


def test_polyak_moves_targets_by_exactly_coef() -> None:
    learner = Learner(CFG, 2)
    with torch.no_grad():
        for p in learner.critic.parameters():
            p.add_(torch.randn_like(p))
    online = [p.detach().clone() for p in learner.critic.parameters()]
    before = [p.detach().clone() for p in learner.critic_target.parameters()]
    polyak_update(learner.critic, learner.critic_target, 0.005)
    for new, old, theta in zip(learner.critic_target.parameters(), before, online, strict=True):
        torch.testing.assert_close(new - old, 0.005 * (theta - old), rtol=1e-4, atol=1e-7)
        assert (new - old).abs().max() > 0


def test_update_applies_polyak_after_the_critic_step() -> None:
    learner = Learner(CFG, 2)
    before = [p.detach().clone() for p in learner.critic_target.parameters()]
    learner.update(_random_batch(CFG.sac.batch_size, 2))
    coef = CFG.sac.target_update_coef
    for new, old, theta in zip(learner.critic_target.parameters(), before, learner.critic.parameters(), strict=True):
        torch.testing.assert_close(new, old + coef * (theta.detach() - old), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("log_std, alpha_should", [(-6.0, "rise"), (0.0, "fall")])
def test_alpha_follows_the_target_entropy(log_std: float, alpha_should: str) -> None:
    learner = Learner(CFG, 3)
    last = learner.actor.net[-1]
    with torch.no_grad():  # entropy far below (-6) or above (0) the target -|A| = -3
        last.weight.zero_()
        last.bias[3:] = log_std
    before = learner.log_alpha.exp().item()
    metrics = _floats(learner.update(_random_batch(CFG.sac.batch_size, 3)))
    assert (metrics["actor/entropy"] < -3) == (alpha_should == "rise")
    assert (learner.log_alpha.exp().item() > before) == (alpha_should == "rise")


def test_checkpoint_round_trip_resumes_bit_for_bit(cheetah: tuple[Batch, int]) -> None:
    batch, action_dim = cheetah
    original = Learner(CFG, action_dim, seed=3)
    for _ in range(2):
        original.update(batch)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = Learner(CFG, action_dim, seed=99)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    a = _floats(original.update(batch))
    b = _floats(resumed.update(batch))
    assert a == b
    pa, pb = _params(original), _params(resumed)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key
    assert resumed.model_updates == original.model_updates == 3
    # The resumed learner did not simply start over: a fresh one lands elsewhere.
    fresh = Learner(CFG, action_dim, seed=3)
    fresh.update(batch)
    assert not torch.equal(_params(fresh)["actor.net.0.weight"], pa["actor.net.0.weight"])


def test_load_rejects_another_architecture() -> None:
    state = Learner(CFG, 2).state_dict()
    with pytest.raises(ValueError, match="action_dim"):
        Learner(CFG, 3).load_state_dict(state)


def test_same_seed_same_run() -> None:
    batch = _random_batch(CFG.sac.batch_size, 2)
    runs = []
    for _ in range(2):
        learner = Learner(CFG, 2, seed=7)
        learner.update(batch)
        learner.figure(batch)  # logging a figure must not perturb training
        learner.update(batch)
        runs.append(_params(learner))
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


def test_update_steps_every_network_once() -> None:
    batch = _random_batch(CFG.sac.batch_size, 2)
    learner = Learner(CFG, 2)
    before = _params(learner)
    metrics = learner.update(batch)
    assert set(metrics) == MODEL_KEYS | SAC_KEYS
    assert all(v.dim() == 0 for v in metrics.values())  # device tensors: the update never syncs
    assert all(np.isfinite(v) for v in _floats(metrics).values())
    learner.check_finite()
    after = _params(learner)
    for key in ("model.encoder.net.0.weight", "model.decoder.net.0.weight", "actor.net.0.weight",
                "critic.q1.0.weight", "critic_target.q2.0.weight", "log_alpha"):
        assert not torch.equal(before[key], after[key]), key
    assert (learner.model_updates, learner.sac_updates) == (1, 1)
    with pytest.raises(ValueError, match="SAC batch"):
        learner.update(batch.head(CFG.model.batch_size - 1))


def test_model_and_critic_share_one_backward_exactly() -> None:
    """The joint update's single backward of eq. 9 + eq. 10 gives each network the gradients of its own loss."""
    batch = _random_batch(CFG.sac.batch_size, 2)
    learner = Learner(CFG, 2)
    noise = learner._draw_noise(batch.batch_size)
    (loss_model, loss_critic), _, _ = learner._model_critic_losses(batch, noise)
    model_params, critic_params = list(learner.model.parameters()), list(learner.critic.parameters())
    separate = torch.autograd.grad(loss_model, model_params, retain_graph=True, allow_unused=True)
    separate += torch.autograd.grad(loss_critic, critic_params, retain_graph=True)
    joint = torch.autograd.grad(loss_model + loss_critic, model_params + critic_params, allow_unused=True)
    for a, b in zip(separate, joint, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def _losses_and_grads(learner: Learner, batch: Batch, noise, one_rollout: bool):  # noqa: ANN001, ANN202
    learner.one_rollout = one_rollout
    params = list(learner.model.parameters()) + list(learner.critic.parameters())
    (loss_model, loss_critic), transition, _ = learner._model_critic_losses(batch, noise)
    return loss_model, loss_critic, transition, torch.autograd.grad(loss_model + loss_critic, params, allow_unused=True)


def test_one_rollout_gives_the_losses_and_gradients_of_two(cheetah: tuple[Batch, int]) -> None:
    """The CUDA path (the whole SAC batch filtered in one posterior rollout) and the CPU path (the head with
    gradients, the tail in a second rollout without) give the same eq. 9 and eq. 10, SAC latents and every
    model and critic gradient (to float rounding: GEMMs of other shapes may sum in another order)."""
    frames, action_dim = cheetah
    cfg = with_(CFG, model={"batch_size": 3}, sac={"batch_size": 8})
    learner = Learner(cfg, action_dim)
    batch = frames.to(learner.device)  # real frames, a reset window and a padded one in the head
    noise = learner._draw_noise(batch.batch_size)
    one_model, one_critic, one_transition, one = _losses_and_grads(learner, batch, noise, one_rollout=True)
    two_model, two_critic, two_transition, two = _losses_and_grads(learner, batch, noise, one_rollout=False)
    torch.testing.assert_close(one_model, two_model, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(one_critic, two_critic, rtol=1e-5, atol=1e-5)
    for a, b in zip(one_transition, two_transition, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    grads = 0
    for a, b in zip(one, two, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
            grads += int(b.abs().sum() > 0)
    assert grads > len(one) // 2  # the comparison saw real gradients, not zeros


def test_non_finite_loss_is_caught_on_the_next_check() -> None:
    batch = _random_batch(CFG.sac.batch_size, 2)
    reward = batch.reward.clone()
    reward[0, 2] = float("nan")
    learner = Learner(CFG, 2)
    learner.update_model(batch._replace(reward=reward))  # no sync here: the flag stays on the device
    learner.update_model(batch)
    with pytest.raises(FloatingPointError, match="model loss became NaN or infinite within the last 2 updates"):
        learner.check_finite()


def test_bad_batch_is_named() -> None:
    batch = _random_batch(CFG.sac.batch_size, 2)
    with pytest.raises(ValueError, match="batch.action"):
        Learner(CFG, 3).update(batch)


def test_actor_weights_blob_and_figure() -> None:
    learner = Learner(CFG, 2)
    blob = pickle.loads(pickle.dumps(learner.actor_weights(version=7)))
    assert blob["version"] == 7 and blob["action_dim"] == 2
    assert blob["model_cfg"]["z1_dim"] == CFG.model.z1_dim and blob["sac_cfg"]["gamma"] == CFG.sac.gamma
    # The policy's encoder and actor, and the latent model's filtering networks for the evaluator's probe.
    assert {k.split(".")[0] for k in blob["state_dict"]} == {"encoder", "actor", *FILTER_MODULES}
    assert all(v.device.type == "cpu" for v in blob["state_dict"].values())
    n = sum(v.numel() for k, v in blob["state_dict"].items() if k.split(".")[0] in ("encoder", "actor"))
    assert n == learner.parameter_counts()["encoder"] + learner.parameter_counts()["actor"]
    image = learner.figure(_random_batch(5, 2), sequences=2)
    assert image.dtype == np.uint8 and image.shape == (8 * 64 + 7 * 4, T * 64, 3)


def test_resume_may_change_learning_rates_but_not_shapes() -> None:
    state = Learner(CFG, 2).state_dict()
    faster = Learner(with_(CFG, sac={"actor_lr": 1e-3}), 2)
    faster.load_state_dict(state)
    assert faster.actor_optimizer.param_groups[0]["lr"] == 1e-3
    with pytest.raises(ValueError, match="sac.hidden_dim"):
        Learner(with_(CFG, sac={"hidden_dim": 32}), 2).load_state_dict(state)
