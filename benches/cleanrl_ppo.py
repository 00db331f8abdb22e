"""PPO on CartPole-v1 in PyTorch + gymnasium, step for step as CleanRL's `ppo.py` does it, for
`benches/vs_cleanrl_ppo.sh` (PyPI's `cleanrl` package is 0.4.8 from 2020, gym-based, and the
current script is not on PyPI, so this file restates it; no tensorboard, no tyro).

Same as CleanRL: 4 envs in a SyncVectorEnv reset at once when an episode ends, 128 steps each
per update, a 64-64 tanh actor and critic with orthogonal init (gain sqrt 2, 0.01 for the policy
head, 1 for the value head), one Adam (eps 1e-5) over both at 2.5e-4 annealed linearly, GAE
(gamma 0.99, lambda 0.95), 4 epochs of 4 shuffled minibatches, per-minibatch advantage
normalization, clipped surrogate (0.2), clipped value loss, entropy 0.01, value 0.5, global
gradient norm 0.5, truncation treated as done. Device: CUDA if present, as CleanRL defaults.

Added: it stops once the mean return over the last 100 episodes reaches 475 (as
`flare rl train` does) and prints one JSON line {"solved","env_steps","mean_return","wall_s"}.

    python benches/cleanrl_ppo.py --seed 1 [--total-timesteps 500000]
"""

import argparse
import collections
import json
import random
import time

T0 = time.time()

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.distributions.categorical import Categorical  # noqa: E402


def init_layer(layer, std=np.sqrt(2), bias=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias)
    return layer


def mlp(n_in, n_out, out_std):
    return nn.Sequential(
        init_layer(nn.Linear(n_in, 64)),
        nn.Tanh(),
        init_layer(nn.Linear(64, 64)),
        nn.Tanh(),
        init_layer(nn.Linear(64, n_out), std=out_std),
    )


class Agent(nn.Module):
    def __init__(self, obs_dim, n_actions):
        super().__init__()
        self.critic = mlp(obs_dim, 1, 1.0)
        self.actor = mlp(obs_dim, n_actions, 0.01)

    def value(self, x):
        return self.critic(x)

    def act(self, x, action=None):
        dist = Categorical(logits=self.actor(x))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--env-id", default="CartPole-v1")
    p.add_argument("--total-timesteps", type=int, default=500_000)
    p.add_argument("--threshold", type=float, default=475.0)
    a = p.parse_args()
    num_envs, num_steps, minibatches, epochs = 4, 128, 4, 4
    lr0, gamma, lam, clip, ent_coef, vf_coef, max_norm = 2.5e-4, 0.99, 0.95, 0.2, 0.01, 0.5, 0.5
    batch = num_envs * num_steps
    mb_size = batch // minibatches

    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    torch.backends.cudnn.deterministic = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(a.env_id) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    obs_dim = envs.single_observation_space.shape[0]
    agent = Agent(obs_dim, envs.single_action_space.n).to(device)
    opt = torch.optim.Adam(agent.parameters(), lr=lr0, eps=1e-5)

    obs = torch.zeros((num_steps, num_envs, obs_dim), device=device)
    actions = torch.zeros((num_steps, num_envs), device=device)
    logprobs = torch.zeros((num_steps, num_envs), device=device)
    rewards = torch.zeros((num_steps, num_envs), device=device)
    dones = torch.zeros((num_steps, num_envs), device=device)
    values = torch.zeros((num_steps, num_envs), device=device)

    step = 0
    next_obs, _ = envs.reset(seed=a.seed)
    next_obs = torch.Tensor(next_obs).to(device)
    next_done = torch.zeros(num_envs, device=device)
    ep_ret = np.zeros(num_envs)
    recent = collections.deque(maxlen=100)
    updates = a.total_timesteps // batch
    solved = False
    for update in range(1, updates + 1):
        opt.param_groups[0]["lr"] = (1.0 - (update - 1.0) / updates) * lr0
        for t in range(num_steps):
            step += num_envs
            obs[t] = next_obs
            dones[t] = next_done
            with torch.no_grad():
                action, logprob, _, value = agent.act(next_obs)
                values[t] = value.flatten()
            actions[t] = action
            logprobs[t] = logprob
            o, r, term, trunc, _ = envs.step(action.cpu().numpy())
            done = np.logical_or(term, trunc)
            ep_ret += r
            for i in np.nonzero(done)[0]:
                recent.append(ep_ret[i])
                ep_ret[i] = 0.0
            rewards[t] = torch.tensor(r, device=device).view(-1)
            next_obs, next_done = torch.Tensor(o).to(device), torch.Tensor(done).to(device)

        with torch.no_grad():
            next_value = agent.value(next_obs).reshape(1, -1)
            adv = torch.zeros_like(rewards)
            last = 0
            for t in reversed(range(num_steps)):
                if t == num_steps - 1:
                    nonterminal, next_v = 1.0 - next_done, next_value
                else:
                    nonterminal, next_v = 1.0 - dones[t + 1], values[t + 1]
                delta = rewards[t] + gamma * next_v * nonterminal - values[t]
                adv[t] = last = delta + gamma * lam * nonterminal * last
            returns = adv + values

        b_obs = obs.reshape((-1, obs_dim))
        b_logprobs, b_actions = logprobs.reshape(-1), actions.reshape(-1)
        b_adv, b_returns, b_values = adv.reshape(-1), returns.reshape(-1), values.reshape(-1)
        inds = np.arange(batch)
        for _ in range(epochs):
            np.random.shuffle(inds)
            for start in range(0, batch, mb_size):
                mb = inds[start : start + mb_size]
                _, newlogprob, entropy, newvalue = agent.act(b_obs[mb], b_actions.long()[mb])
                ratio = (newlogprob - b_logprobs[mb]).exp()
                mb_adv = b_adv[mb]
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
                newvalue = newvalue.view(-1)
                v_unclipped = (newvalue - b_returns[mb]) ** 2
                v_clipped = b_values[mb] + torch.clamp(newvalue - b_values[mb], -clip, clip)
                v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - b_returns[mb]) ** 2).mean()
                loss = pg_loss - ent_coef * entropy.mean() + v_loss * vf_coef
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), max_norm)
                opt.step()
        if len(recent) == 100 and np.mean(recent) >= a.threshold:
            solved = True
            break
    mean = float(np.mean(recent)) if recent else float("-inf")
    print(json.dumps({"solved": solved, "env_steps": step, "mean_return": mean, "wall_s": time.time() - T0, "device": str(device)}))


if __name__ == "__main__":
    main()
