"""Training dynamics against PyTorch's: the same initial weights, the same batches, the same recipe
written with torch.optim (LAMB written in torch as timm's), torch's schedulers and
nn.CrossEntropyLoss (or timm's binary cross-entropy), BatchNorm in train mode, gradient
accumulation over micro-batches, torchvision's EMA loop, Mixup/CutMix mixed as timm's and
stochastic depth as torchvision's, both with the project's draws.

Two checks that float32 chaos cannot fool:

- teacher-forced single steps: from the same state (parameters, BatchNorm statistics, optimizer
  buffers, step count), one step on each side in float64, at the start, around every schedule
  boundary and at the end. The parameter update, the optimizer's buffers, the running statistics
  (and the EMA) must agree to `TOLERANCE` relative; a semantic difference shows as 1e-3 and more;
- the free-running loss curve: the project's float32 curve must stay within 0.1% and within 1% of
  PyTorch's float64 curve for about as many steps (at least half) as PyTorch's own float32 run.

Augmentation is off on both sides (the same fixed batches); the project's side is its own step,
assembled exactly as `experiments.train` assembles it (`train.experiment.assemble`).
"""

import copy
import dataclasses
import functools
import itertools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from resnet_jax import pretrained
from resnet_jax.data.device import mixing_key
from resnet_jax.data.mixing import Mixing, sample
from resnet_jax.errors import InvalidInputError
from resnet_jax.interop.convert import torch_keys, torch_layout
from resnet_jax.interop.torch_reference import TorchResNet
from resnet_jax.saved import named_leaves
from resnet_jax.train import losses, optim
from resnet_jax.train.config import validate_config
from resnet_jax.train.experiment import Experiment, assemble

TOLERANCE = 1e-5  # teacher-forced, float64: differences of 1e-3 and up are semantic
THRESHOLDS = (1e-3, 1e-2)  # the free-running curve: within 0.1% and within 1%
BUFFERS = ("trace", "mu", "nu")  # optax's momentum (SGD) and moments (Adam)
TORCH_BUFFERS = {"trace": "momentum_buffer", "mu": "exp_avg", "nu": "exp_avg_sq"}
# Deliberate semantic differences (config section, key, value on the project's side only).
CONTROLS = {"": ("", "", None), "decay_all": ("optim", "decay_all", True),
            "biased_running_var": ("model", "bn_unbiased_var", False)}


def without_augmentation(config: Any) -> Any:
  """The config with every augmentation off and the data read on the host (fixed batches);
  Mixup and CutMix stay, with the project's draws given to both sides (`TorchSide.targets`)."""
  config = copy.deepcopy(config)
  config.data.update(crop_padding=0, random_flip=False, random_resized_crop=False,
                     augmentations=(), erasing_prob=0.0, device_resident="no", num_workers=0)
  return config


@dataclasses.dataclass
class Setup:
  """What both sides share: the experiment (augmentation off), the fixed batches."""

  exp: Experiment
  batches: list[dict[str, np.ndarray]]

  @property
  def config(self) -> Any:
    return self.exp.config


def setup(config: Any, steps: int) -> Setup:
  """The experiment with augmentation off, and the first `steps` training batches."""
  config = without_augmentation(config)
  weights = pretrained.load(config.init.checkpoint) if config.init.checkpoint else None
  exp = assemble(config, weights=weights)
  return Setup(exp, list(itertools.islice(exp.pipeline.train_batches(0), steps)))


class JaxSide:
  """The project's own train step at a precision, and the states it passes through."""

  def __init__(self, shared: Setup, config: Any, precision: str, start: Any = None):
    config = copy.deepcopy(config)
    config.train.precision = precision
    self.exp = assemble(config, weights=shared.exp.weights, dataset=shared.exp.dataset)
    self.runner, self.parts = self.exp.runner, self.exp.parts
    self.initial = self.parts.state if start is None else jax.tree.map(
        lambda a, like: np.asarray(a, like.dtype), start, self.parts.abstract_state)
    self.rng = self.runner.replicate(self.parts.rng)

  def step(self, host_state: Any, batch: dict) -> tuple[Any, float]:
    """One step from a host state: (the host state after it, the loss)."""
    state, metrics = self.exp.steps.train(self.runner.replicate(host_state),
                                          self.runner.shard_batch(batch), self.rng, None)
    loss = float(np.asarray(self.runner.unreplicate(metrics)["train_loss"]))
    return self.runner.unreplicate(state), loss

  def run(self, batches: list[dict]) -> tuple[list[Any], list[float]]:
    """The states before each step and after the last, and the losses."""
    states, losses = [self.initial], []
    for batch in batches:
      state, loss = self.step(states[-1], batch)
      states.append(state)
      losses.append(loss)
    return states, losses


def drop_masks(model: Any, variables: Any, key: jax.Array, shape: tuple) -> dict[str, jax.Array]:
  """{block name: which rows keep its branch} as `model` draws them in training from `key` (the
  masks its blocks sow), for images of `shape` (NHWC)."""
  _, sown = model.clone(axis_name=None).apply(variables, jnp.zeros(shape, jnp.float32), train=True,
                        rngs={"dropout": key}, mutable=["intermediates", "batch_stats"])
  return {name: values["drop_path_keep"][0]
          for name, values in sown.get("intermediates", {}).items() if "drop_path_keep" in values}


def at_step(state: Any, step: int) -> Any:
  """`state` with its step counters (the train state's and the optimizer's) set to `step`."""
  opt_state = jax.tree_util.tree_map_with_path(
      lambda path, x: np.asarray(step, np.asarray(x).dtype)
      if getattr(path[-1], "name", None) == "count" else x, state.opt_state)
  return state.replace(step=np.asarray(step, np.int32), opt_state=opt_state)


def torch_scheduler(optim_config: Any, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int,
                    total_steps: int) -> Any:
  """The config's schedule as PyTorch writes it: LinearLR (or, from 0, a LambdaLR ramp) for the
  warm-up, MultiStepLR (chained: its boundaries stay absolute) or CosineAnnealingLR (after the
  warm-up, SequentialLR) for the rest; stepped once per optimizer step."""
  sched = torch.optim.lr_scheduler
  warmup, boundaries = optim.schedule_steps(optim_config, steps_per_epoch)
  start = float(optim_config.warmup_start_factor)
  warm = None
  if warmup and start > 0:
    warm = sched.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
  elif warmup:
    warm = sched.LambdaLR(optimizer, lambda step: min(1.0, step / warmup))
  if optim_config.schedule == "constant":
    return warm or sched.LambdaLR(optimizer, lambda step: 1.0)
  if optim_config.schedule == "piecewise":
    main = sched.MultiStepLR(optimizer, boundaries, gamma=float(optim_config.decay_factor))
    if warm is None:
      return main
    if start == 0:
      raise InvalidInputError("A piecewise schedule after a warm-up from 0 has no PyTorch form "
                              "(LinearLR cannot start at 0); set optim.warmup_start_factor > 0.")
    return sched.ChainedScheduler([warm, main])
  if optim_config.schedule == "cosine":
    main = sched.CosineAnnealingLR(optimizer, T_max=max(total_steps, warmup + 1) - warmup)
    return sched.SequentialLR(optimizer, [warm, main], milestones=[warmup]) if warm else main
  raise InvalidInputError(f"optim.schedule={optim_config.schedule!r} has no PyTorch counterpart "
                          "here; compare constant, piecewise or cosine schedules.")


class TorchLamb(torch.optim.Optimizer):
  """LAMB as timm's Lamb computes it, written in torch: Adam's bias-corrected step, plus weight
  decay, scaled by |w| / |step| (1 where either is 0) in the groups with weight decay."""

  def __init__(self, groups: list[dict], *, betas: tuple[float, float], eps: float):
    super().__init__(groups, {"lr": 0.0, "betas": betas, "eps": eps, "weight_decay": 0.0})

  @torch.no_grad()
  def step(self, closure: Any = None) -> None:
    del closure
    for group in self.param_groups:
      b1, b2 = group["betas"]
      for p in group["params"]:
        if p.grad is None:
          continue
        state = self.state[p]
        if not state:
          state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                       exp_avg_sq=torch.zeros_like(p))
        state["step"] += 1
        t = float(state["step"])
        state["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        update = (state["exp_avg"] / (1 - b1 ** t)) / (
            (state["exp_avg_sq"] / (1 - b2 ** t)).sqrt() + group["eps"])
        if group["weight_decay"]:
          update.add_(p, alpha=group["weight_decay"])
          w, u = p.norm(), update.norm()
          update.mul_(w / u if w > 0 and u > 0 else 1.0)
        p.add_(update, alpha=-group["lr"])


def torch_loss(optim_config: Any) -> Any:
  """The config's loss written in torch: nn.CrossEntropyLoss(label_smoothing=...), or timm's
  binary cross-entropy (smoothed one-hot targets, thresholded, BCE with logits averaged over
  every element)."""
  smoothing = float(optim_config.label_smoothing)
  name, kwargs = losses.parse_loss(optim_config.get("loss", "softmax_cross_entropy"))
  if name == "softmax_cross_entropy":  # on probability targets, smoothed by torch
    return nn.CrossEntropyLoss(label_smoothing=smoothing)
  if name == "binary_cross_entropy":
    threshold = dict(kwargs).get("target_threshold")

    def bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
      targets = targets * (1 - smoothing) + smoothing / logits.shape[1]
      if threshold is not None:
        targets = (targets > threshold).to(logits.dtype)
      return nn.functional.binary_cross_entropy_with_logits(logits, targets)
    return bce
  raise InvalidInputError(f"The PyTorch twin has no loss {name!r} yet: compare with "
                          "--config.optim.loss=softmax_cross_entropy or binary_cross_entropy.")


def torch_optimizer(optim_config: Any) -> Any:
  """The torch optimizer of the config's (parameter groups -> optimizer), or a one-line refusal."""
  c = optim_config
  factories = {
      "sgd": lambda groups: torch.optim.SGD(groups, lr=0.0, momentum=float(c.momentum),
                                            nesterov=bool(c.nesterov)),
      "adamw": lambda groups: torch.optim.AdamW(groups, lr=0.0, eps=float(c.eps),
                                                betas=(float(c.b1), float(c.b2))),
      "lamb": lambda groups: TorchLamb(groups, betas=(float(c.b1), float(c.b2)), eps=float(c.eps)),
  }
  if c.name not in factories:
    raise InvalidInputError(f"optim.name={c.name!r} has no torch.optim counterpart here; compare "
                            f"{', '.join(sorted(factories))}.")
  return factories[c.name]


class TorchSide:
  """The same recipe in PyTorch: the twin network, torch.optim with the same parameter groups,
  torch's schedulers, nn.CrossEntropyLoss, torch.optim.swa_utils.AveragedModel for the EMA."""

  def __init__(self, shared: Setup, jax_side: JaxSide, dtype: torch.dtype):
    config, parts = shared.config, jax_side.parts
    self.config, self.shared, self.parts, self.dtype = config, shared, parts, dtype
    # Unsynchronised BatchNorm: each device's statistics, as the twin's chunks of the batch.
    replicas = 1 if config.train.sync_batchnorm else jax_side.runner.num_replicas
    self.model = TorchResNet(parts.model, shared.exp.info.image_shape[-1],
                             replicas=replicas).to(dtype)
    self.keys = torch_keys(parts.abstract_state.variables(), parts.model)
    self.params = dict(self.model.named_parameters())
    self.frozen = range(parts.model.frozen_stages)
    self.loss = torch_loss(config.optim)
    self.num_replicas = jax_side.runner.num_replicas
    self.mixing = Mixing.from_config(config.data)
    self.data_rng = jax.random.fold_in(parts.rng, 0)  # the runner's data stream (parallel.py)
    self.step_rng = jax.random.fold_in(parts.rng, 1)  # ... and its step stream
    self.blocks = {f"layer{i + 1}_{j}": block for i in range(len(parts.model.stage_sizes))
                   for j, block in enumerate(getattr(self.model, f"layer{i + 1}"))}
    self.drop_masks = jax.jit(functools.partial(drop_masks, parts.model,
                                                jax_side.initial.variables()),
                              static_argnums=1) if parts.model.drop_path_rate else None
    self.load(jax_side.initial, step=0)

  def _groups(self) -> list[dict]:
    """Parameter groups from the project's own masks: weight decay on what `optim.decay_mask`
    decays, the backbone at `init.backbone_lr_scale`, frozen parts left out."""
    optim_config, init, model = self.config.optim, self.config.init, self.parts.model
    params = self.parts.abstract_state.params
    decayed = set(named_leaves(jax.tree.map(lambda flag: np.zeros(()) if flag else None,
                                            optim.decay_mask(params))))
    peak = optim.peak_learning_rate(optim_config, self.config.train.batch_size)
    groups: dict[tuple[float, float], list] = {}
    for name in named_leaves(params):
      part = model.part_of(name.split("/")[0])
      param = self.params[self.keys[f"params/{name}"]]
      if part is not None and part < model.frozen_stages:
        param.requires_grad_(False)
        continue
      lr = peak * (init.backbone_lr_scale if part is not None else 1.0)
      wd = float(optim_config.weight_decay) if (optim_config.decay_all or name in decayed) else 0.0
      groups.setdefault((lr, wd), []).append(param)
    return [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]

  def _optimizer(self) -> torch.optim.Optimizer:
    return torch_optimizer(self.config.optim)(self._groups())

  def _tensor(self, value: Any) -> torch.Tensor:
    """A project array as a torch tensor in torch's layout."""
    return torch.from_numpy(torch_layout(np.array(value, np.float64))).to(self.dtype)

  def load(self, host_state: Any, step: int) -> None:
    """Sets the network, its statistics, the optimizer's buffers and the schedule to a project
    train state at `step`."""
    with torch.no_grad():
      for name, value in named_leaves(host_state.variables()).items():
        self.model.state_dict()[self.keys[name]].copy_(self._tensor(value))
    self.optimizer = self._optimizer()
    for name, value in named_leaves(host_state.opt_state).items():
      parts = name.split("/")
      kind = next((p for p in parts if p in BUFFERS), None)
      if kind is None:
        continue
      param = self.params[self.keys["params/" + "/".join(parts[parts.index(kind) + 1:])]]
      state = self.optimizer.state[param]
      state[TORCH_BUFFERS[kind]] = self._tensor(value)
      if kind != "trace":
        state["step"] = torch.tensor(float(step))
    self.scheduler = torch_scheduler(self.config.optim, self.optimizer,
                                     steps_per_epoch=self.shared.exp.steps_per_epoch,
                                     total_steps=self.shared.exp.total_steps)
    with warnings.catch_warnings():  # fast-forwarding before any optimizer step, on purpose
      warnings.simplefilter("ignore", UserWarning)
      for _ in range(step):
        self.scheduler.step()
    self.ema, self.step_count = None, step
    if self.config.optim.ema_decay:
      # The step's decay: the config's, or torchvision's adjustment of it (train.experiment).
      ema_fn = torch.optim.swa_utils.get_ema_multi_avg_fn(float(self.parts.step_config.ema_decay))
      self.ema = torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=ema_fn,
                                                     use_buffers=True)
      with torch.no_grad():
        for name, value in named_leaves(host_state.variables(ema=True)).items():
          self.ema.module.state_dict()[self.keys[name]].copy_(self._tensor(value))
      self.ema.n_averaged.fill_(1)

  def step(self, batch: dict) -> float:
    """One optimizer step on a batch; its loss."""
    info = self.shared.exp.info
    x = (batch["image"].astype(np.float64) - np.asarray(info.mean)) / np.asarray(info.std)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self.dtype)
    x, y = self.targets(x, torch.from_numpy(batch["label"].astype(np.int64)))
    self.model.train()
    for part in self.frozen:  # frozen parts keep BatchNorm in inference mode
      for name in (("conv1", "bn1") if part == 0 else (f"layer{part}",)):
        if hasattr(self.model, name):
          getattr(self.model, name).eval()
    if self.parts.model.frozen_stages > len(self.parts.model.stage_sizes) and \
        hasattr(self.model, "final_bn"):
      self.model.final_bn.eval()
    self.optimizer.zero_grad(set_to_none=True)
    # Accumulation as torch users write it: micro-batch i is every replica's i-th slice of its
    # rows (as the step splits them), each loss divided by k before its backward pass.
    k = int(self.config.optim.get("accumulate_steps", 1))
    rows = len(y) // self.num_replicas
    loss = 0.0
    for i in range(k):
      pick = np.concatenate([np.arange(r * rows + i * rows // k, r * rows + (i + 1) * rows // k)
                             for r in range(self.num_replicas)])
      pick = torch.from_numpy(pick)
      self.set_drop_masks(i, x.shape[1:], rows // k)
      micro_loss = self.loss(self.model(x[pick]), y[pick])
      (micro_loss / k).backward()
      loss += micro_loss.item() / k
    if self.config.optim.clip_norm > 0:
      nn.utils.clip_grad_norm_([p for p in self.params.values() if p.grad is not None],
                               float(self.config.optim.clip_norm))
    self.optimizer.step()
    self.scheduler.step()
    if self.ema is not None:  # torchvision's loop: every N-th batch of an epoch, copying early
      settings = self.parts.step_config
      in_epoch = self.step_count % settings.steps_per_epoch if settings.steps_per_epoch else \
          self.step_count
      if in_epoch % settings.ema_every == 0:
        if self.step_count <= settings.ema_copy_until:
          self.ema.n_averaged.fill_(0)
        self.ema.update_parameters(self.model)
    self.step_count += 1
    return loss

  def set_drop_masks(self, micro: int, image_shape: tuple, rows: int) -> None:
    """Gives each block the rows the project's step keeps in micro-batch `micro` of this step:
    every replica's mask from that replica's own key (train/parallel.py, train/step.py)."""
    if self.drop_masks is None:
      return
    step_key = jax.random.fold_in(self.step_rng, self.step_count)
    per_replica = []
    for r in range(self.num_replicas):
      key = jax.random.fold_in(step_key, r)
      if int(self.config.optim.get("accumulate_steps", 1)) > 1:
        key = jax.random.fold_in(key, micro)
      per_replica.append(self.drop_masks(key, (rows, *image_shape[1:], image_shape[0])))
    for name, block in self.blocks.items():
      masks = [m.get(name) for m in per_replica]
      block.keep = None if masks[0] is None else torch.from_numpy(np.concatenate(
          [np.asarray(m) for m in masks]))

  def targets(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, probability targets): one-hot, or each replica's rows mixed with its rows
    reversed as timm's Mixup does, with the draws the project's step makes at this step."""
    targets = nn.functional.one_hot(labels, self.shared.exp.info.num_classes).to(x.dtype)
    if not self.mixing.enabled:
      return x, targets
    rows, (h, w) = len(labels) // self.num_replicas, x.shape[2:]
    x, targets = x.clone(), targets.clone()
    for r in range(self.num_replicas):
      part = slice(r * rows, (r + 1) * rows)
      key = mixing_key(self.data_rng, self.step_count, r, self.num_replicas, rows)
      draws = jax.tree.map(np.asarray, sample(key, self.mixing, rows, h, w))
      mine, theirs = x[part].clone(), x[part].flip(0)
      own = []
      for i in range(rows):
        lam = float(draws.weight[i])
        if draws.cutmix[i]:  # timm's rand_bbox and correct_lam (the cut side in float32)
          ratio = np.sqrt(np.float32(1.0) - draws.weight[i])
          cut_h, cut_w = int(np.float32(h) * ratio), int(np.float32(w) * ratio)
          cy, cx = int(draws.center_y[i]), int(draws.center_x[i])
          top, bottom = np.clip([cy - cut_h // 2, cy + (cut_h + 1) // 2], 0, h)
          left, right = np.clip([cx - cut_w // 2, cx + (cut_w + 1) // 2], 0, w)
          mine[i, :, top:bottom, left:right] = theirs[i, :, top:bottom, left:right]
          lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        elif lam != 1.0:
          mine[i] = x[part][i] * lam + theirs[i] * (1.0 - lam)
        own.append(lam)
      weight = torch.tensor(own, dtype=x.dtype)[:, None]
      x[part] = mine
      targets[part] = targets[part] * weight + targets[part].flip(0) * (1.0 - weight)
    return x, targets

  def arrays(self) -> dict[str, dict[str, np.ndarray]]:
    """The network's variables, the optimizer's buffers and the EMA, by torch name."""
    out = {"variables": {k: v.detach().double().numpy().copy()
                         for k, v in self.model.state_dict().items() if v.is_floating_point()},
           "buffers": {}}
    names = {id(p): k for k, p in self.params.items()}
    for param, state in self.optimizer.state.items():
      for kind, key in TORCH_BUFFERS.items():
        if key in state:
          out["buffers"][f"{kind}/{names[id(param)]}"] = state[key].double().numpy().copy()
    if self.ema is not None:
      out["ema"] = {k: v.detach().double().numpy().copy()
                    for k, v in self.ema.module.state_dict().items() if v.is_floating_point()}
    return out


def jax_arrays(host_state: Any, keys: dict[str, str], ema: bool) -> dict[str, dict]:
  """The same views of a project train state as `TorchSide.arrays`, by torch name."""
  array = lambda v: torch_layout(np.asarray(v, np.float64))
  out = {"variables": {keys[k]: array(v)
                       for k, v in named_leaves(host_state.variables()).items()},
         "buffers": {}}
  for name, value in named_leaves(host_state.opt_state).items():
    parts = name.split("/")
    kind = next((p for p in parts if p in BUFFERS), None)
    if kind is not None:
      param = keys["params/" + "/".join(parts[parts.index(kind) + 1:])]
      out["buffers"][f"{kind}/{param}"] = array(value)
  if ema:
    out["ema"] = {keys[k]: array(v)
                  for k, v in named_leaves(host_state.variables(ema=True)).items()}
  return out


def relative(a: dict[str, np.ndarray], b: dict[str, np.ndarray], names: list[str]) -> float:
  """||a - b|| / ||b|| over the named arrays (0 when both are 0)."""
  diff = math.sqrt(sum(float(np.sum((a[n] - b[n]) ** 2)) for n in names))
  norm = math.sqrt(sum(float(np.sum(b[n] ** 2)) for n in names))
  return diff / norm if norm else diff


def teacher_forced(shared: Setup, jax64: JaxSide, states: list[Any], torch64: TorchSide,
                   step: int) -> dict[str, float]:
  """One float64 step on each side from the project's state at `step`; relative differences."""
  start = at_step(states[min(step, len(states) - 1)], step)
  batch = shared.batches[step % len(shared.batches)]
  after, _ = jax64.step(start, batch)
  torch64.load(start, step)
  torch64.step(batch)
  keys, ema = torch64.keys, bool(shared.config.optim.ema_decay)
  before, mine, theirs = (jax_arrays(start, keys, ema), jax_arrays(after, keys, ema),
                          torch64.arrays())
  params = [keys[f"params/{n}"] for n in named_leaves(start.params)]
  stats = [keys[f"batch_stats/{n}"] for n in named_leaves(start.batch_stats)]
  update = lambda side: {n: side["variables"][n] - before["variables"][n] for n in params}
  result = {"step": step,
            "params": relative(update(mine), update(theirs), params),
            "buffers": relative(mine["buffers"], theirs["buffers"], sorted(theirs["buffers"])),
            "running_mean": relative(mine["variables"], theirs["variables"],
                                     [n for n in stats if n.endswith("mean")]),
            "running_var": relative(mine["variables"], theirs["variables"],
                                    [n for n in stats if n.endswith("var")])}
  if ema:
    result["ema"] = relative(mine["ema"], theirs["ema"], sorted(theirs["ema"]))
  if sorted(mine["buffers"]) != sorted(theirs["buffers"]):
    result["buffers"] = float("inf")  # one side keeps buffers the other does not
  return result


def checked_steps(shared: Setup) -> list[int]:
  """The start, the end, and each side of every schedule boundary (the warm-up's end too)."""
  warmup, boundaries = optim.schedule_steps(shared.config.optim, shared.exp.steps_per_epoch)
  around = [b + d for b in [warmup] + boundaries if b for d in (-1, 0, 1)]
  total = shared.exp.total_steps
  return sorted({0, total - 1, *[k for k in around if 0 <= k < total]})


def within(curve: list[float], reference: list[float], tolerance: float) -> int:
  """How many leading steps `curve` stays within `tolerance` (relative) of `reference`."""
  for i, (a, b) in enumerate(zip(curve, reference)):
    if abs(a - b) > tolerance * abs(b):
      return i
  return len(curve)


def compare(config: Any, *, steps: int, control: str = "") -> dict[str, Any]:
  """Runs both sides from the same weights on the same batches; see the module docstring.

  Args:
    config: a run config (its dataset is read with augmentation off).
    steps: free-running steps on each side.
    control: a semantic difference on the project's side only, which the teacher-forced check
      must detect: "decay_all" (weight decay on every parameter, PyTorch's on the kernels) or
      "biased_running_var" (flax's BatchNorm running variance).

  Returns:
    {"losses": {side: [...]}, "within": {side: {threshold: steps}}, "teacher_forced": [...],
     "worst_teacher_forced", "passed_teacher_forced", "passed_free_running", "passed"}.
  """
  validate_config(config)
  torch_loss(config.optim)  # a loss or optimizer the twin has not is refused before anything runs
  torch_optimizer(config.optim)
  if control not in CONTROLS:
    raise InvalidInputError(f"Unknown --control {control!r}; use one of {sorted(CONTROLS)}.")
  shared = setup(config, steps)
  ours = copy.deepcopy(shared.config)
  section, key, value = CONTROLS[control]
  if section:
    ours[section][key] = value
  jax32 = JaxSide(shared, ours, "float32")
  _, jax_losses = jax32.run(shared.batches)
  curves = {"jax_float32": jax_losses}
  for name, dtype in (("torch_float64", torch.float64), ("torch_float32", torch.float32)):
    side = TorchSide(shared, jax32, dtype)
    curves[name] = [side.step(batch) for batch in shared.batches]
  with jax.enable_x64(True):
    jax64 = JaxSide(shared, ours, "float64", start=jax32.initial)
    states, _ = jax64.run(shared.batches)
    torch64 = TorchSide(shared, jax64, torch.float64)
    teacher = [teacher_forced(shared, jax64, states, torch64, k) for k in checked_steps(shared)]
  reference = curves["torch_float64"]
  counts = {side: {t: within(curves[side], reference, t) for t in THRESHOLDS}
            for side in ("jax_float32", "torch_float32")}
  worst = max(max(v for k, v in row.items() if k != "step") for row in teacher)
  free_running = all(counts["jax_float32"][t] >= math.ceil(counts["torch_float32"][t] / 2)
                     for t in THRESHOLDS)
  return {"steps": steps, "losses": curves, "within": counts, "teacher_forced": teacher,
          "worst_teacher_forced": worst, "passed_teacher_forced": worst <= TOLERANCE,
          "passed_free_running": free_running, "passed": worst <= TOLERANCE and free_running}


def format_report(report: dict[str, Any]) -> str:
  """The per-step losses, the teacher-forced rows and the verdicts, as text."""
  curves = report["losses"]
  rows = ["step  jax_float32     torch_float64   torch_float32   jax rel.diff   torch32 rel.diff"]
  for i, (mine, ref, theirs) in enumerate(zip(curves["jax_float32"], curves["torch_float64"],
                                              curves["torch_float32"])):
    rows.append(f"{i + 1:4d}  {mine:.9f}  {ref:.9f}  {theirs:.9f}  "
                f"{abs(mine - ref) / abs(ref):.3e}      {abs(theirs - ref) / abs(ref):.3e}")
  rows.append("teacher-forced float64 steps (relative differences):")
  for row in report["teacher_forced"]:
    rows.append("  step " + str(row["step"]) + ": " + ", ".join(
        f"{k} {v:.2e}" for k, v in row.items() if k != "step"))
  within = report["within"]
  for threshold in within["jax_float32"]:
    rows.append(f"steps within {threshold:.1%} of PyTorch float64: project float32 "
                f"{within['jax_float32'][threshold]}, PyTorch float32 "
                f"{within['torch_float32'][threshold]} (of {report['steps']})")
  rows.append(f"worst teacher-forced relative difference: {report['worst_teacher_forced']:.2e} "
              f"({'pass' if report['passed_teacher_forced'] else 'FAIL'}); free-running: "
              f"{'pass' if report['passed_free_running'] else 'FAIL'}")
  return "\n".join(rows)
