"""Arms of one shape trained as one stacked coder: a fused grid's step runs one set of kernels for all of them.

A sweep's grid holds arms that differ only in learning rate or penalty. Stepped one after another
on each batch, a small arm's step is bound by kernel launches and Python, not by the device.
Stacked, their parameters become [arms, ...] tensors of one coder of the same class, whose loss
takes every arm in one pass of batched products (the kinds' kernels accept a leading arm
dimension). Each arm's own coder holds views of its slices, so its optimiser, clipping, firing
history, checkpoints, evaluation and saved coder are its own, unchanged; an arm trained in a stack
equals the arm trained alone up to the rounding of batched products.

Arms stack when their kind is `stackable`, they run on one process (`train.parallel` none) with
`train.stack_arms` on, their configurations differ only in `train.lr` and the kind's `per_arm_fields`,
and they start at the same step (their shared length and batch size make them stop at the same step
too).
"""

import json

import torch

from pipeline.coders.base import SparseActs, fired_in_batch
from pipeline.coders.registry import coder_class
from pipeline.train.arm_run import ArmRun, autocast
from pipeline.train.optimizer import clip_divisor


def stack_key(arm: ArmRun) -> str | None:
    """What arms must share to be stacked, or None for an arm that trains on its own."""
    kind = coder_class(arm.config["coder"]["kind"])
    if not kind.stackable or not arm.cfg.stack_arms or arm.cfg.parallel != "none":
        return None
    shared = dict(arm.config, start_step=arm.start_step)
    shared["coder"] = {k: v for k, v in arm.config["coder"].items() if k not in kind.per_arm_fields}
    shared["train"] = {k: v for k, v in arm.config["train"].items() if k != "lr"}
    return json.dumps(shared, sort_keys=True, default=str)


def group_arms(arms: dict[int, ArmRun]) -> list[list[int]]:
    """The grid positions of the arms trained together: each group a stack, or one arm on its own."""
    groups: dict[object, list[int]] = {}
    for i, arm in arms.items():
        key = stack_key(arm)
        groups.setdefault(("alone", i) if key is None else key, []).append(i)
    return list(groups.values())


def build_stacks(arms: dict[int, ArmRun]) -> list["ArmStack"]:
    """The grid's arms grouped by `group_arms`; a group whose stack cannot be built (no memory for the copy)
    trains arm by arm."""
    stacks = []
    for group in group_arms(arms):
        try:
            stacks.append(ArmStack({i: arms[i] for i in group}))
        except torch.OutOfMemoryError:  # the arms are untouched: they become views only once the copy exists
            stacks += [ArmStack({i: arms[i]}) for i in group]
    return stacks


class ArmStack:
    """Arms (by grid position) trained on each batch together; without a stacked coder (one arm, or no memory
    for one) each arm takes its own step."""

    def __init__(self, arms: dict[int, ArmRun]):
        self.arms = dict(arms)
        first = next(iter(arms.values()))
        self.n_steps, self.start_step = first.n_steps, first.start_step
        self.coder = self._stacked() if len(arms) > 1 else None

    def active(self, step: int) -> bool:
        return self.start_step <= step < self.n_steps

    def step(self, batch: torch.Tensor, step: int) -> dict[int, Exception]:
        """Trains every arm on `batch`; returns the arms that failed (they have left the stack)."""
        failed: dict[int, Exception] = {}
        if self.coder is None:
            for i, arm in list(self.arms.items()):
                failed |= self._run(i, arm.step, batch, step)
            return failed
        try:
            self._step_together(batch, step, failed)
        except Exception as err:  # noqa: BLE001 - the stack's shared work failed (e.g. out of memory): its arms stop
            for i in list(self.arms):
                self.arms.pop(i).abandon()
                failed[i] = err
        if failed:
            self._restack()
        return failed

    def _step_together(self, batch: torch.Tensor, step: int, failed: dict[int, Exception]) -> None:
        """One step of every arm; arms whose own part (logging, checkpoint) fails go into `failed`."""
        arms = list(self.arms.items())
        x, target = arms[0][1].columns(batch)
        # Every arm gets its own rate; the sparsity factor is one for all, as their schedules are shared.
        sparsity_factor = [arm.set_rate(step) for _, arm in arms][0]
        with autocast(x.device, arms[0][1].cfg.precision):
            parts, f = self.coder.loss(x, sparsity_factor, **target)
        for a, (i, arm) in enumerate(arms):
            failed |= self._run(i, arm.record, {name: part[a] for name, part in parts.items()}, step)
        parts["loss"].sum().backward()  # each arm's loss reaches only its own slices
        grads = [p.grad for p in self.coder.parameters()]
        self.coder.zero_grad(set_to_none=True)
        live = [
            (a, arm) for a, (i, arm) in enumerate(arms) if i not in failed
        ]  # the failed ones' slices are dropped next
        self._update(live, grads, f, step)
        for i, arm in arms:
            if i not in failed:
                failed |= self._run(i, arm.save_checkpoint_if_due, step)

    def _restack(self) -> None:
        """After arms failed: the others in a new, smaller stack; a lone arm, or all of them when no memory is
        left for the new stack's copy, in memory of their own."""
        self.coder = None
        if len(self.arms) > 1:
            try:
                self.coder = self._stacked()
                return
            except torch.OutOfMemoryError:
                pass
        for arm in self.arms.values():
            for p in arm.coder.parameters():
                p.data = p.data.clone()
            for name, buffer in arm.coder.named_buffers():
                _set(arm.coder, name, buffer.clone())
            arm.firing.last_fired = arm.firing.last_fired.clone()
        self.last_fired = None

    def _update(
        self, live: list[tuple[int, ArmRun]], grads: list[torch.Tensor], f: torch.Tensor | SparseActs, step: int
    ) -> None:
        """`ArmRun.update` for the `live` arms (by slice) at once: per-arm clipping, Adam, after-step, firing
        history."""
        if not live:
            return
        _adam_step(live, grads, _clip_divisors(grads, live[0][1].cfg.grad_clip))
        self.coder.after_step()
        fired = fired_in_batch(f)  # [arms, N]
        for _, arm in live:
            arm.firing.tokens += f.shape[-2]
        self.last_fired.masked_fill_(fired, live[0][1].firing.tokens)  # every arm has seen as many tokens

    def _run(self, i: int, work, *args) -> dict[int, Exception]:
        """{}; or, if `work(*args)` raises, {i: the error}, with arm i abandoned and out of the stack."""
        try:
            work(*args)
            return {}
        except Exception as err:  # noqa: BLE001 - one arm's failure must not stop the others
            self.arms.pop(i).abandon()
            return {i: err}

    def _stacked(self) -> torch.nn.Module:
        """One coder of the arms' class holding every arm's state along a new first dimension.

        Each arm's parameters, buffers and firing history then become views of its slice, so what
        the stack updates is what the arm's checkpoints, evaluation and saved coder read.
        """
        coders = [arm.coder for arm in self.arms.values()]
        first = coders[0]
        with torch.device("meta"):  # built without drawing or allocating weights: they come from the arms
            stacked = type(first)(first.d_in, first.n_features, **first.hparams)
        for name, _ in first.named_parameters():
            _set(stacked, name, torch.nn.Parameter(torch.stack([c.get_parameter(name).detach() for c in coders])))
        for name, _ in first.named_buffers():
            _set(stacked, name, torch.stack([c.get_buffer(name) for c in coders]))
        stacked.load_state_dict(stacked.state_dict())  # as for each arm below: host-side knowledge starts afresh
        for field in first.per_arm_fields:
            setattr(stacked, field, torch.tensor([getattr(c, field) for c in coders], device=first.b_dec.device))
        for a, coder in enumerate(coders):
            for name, p in coder.named_parameters():
                p.data = stacked.get_parameter(name).data[a]
            for name, _ in coder.named_buffers():
                _set(coder, name, stacked.get_buffer(name)[a])
            # The stack updates the arm's state from now on, so what the arm's coder kept about it on the host
            # (e.g. TopK's bound on idle tokens) goes stale: reloading its own state makes it forget that.
            coder.load_state_dict(coder.state_dict())
        self.last_fired = torch.stack([arm.firing.last_fired for arm in self.arms.values()])
        for a, arm in enumerate(self.arms.values()):
            arm.firing.last_fired = self.last_fired[a]
        return stacked.train()


def _set(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Sets the parameter or buffer `name`, which may be nested (a clt's decoders are `w_dec.0`, `w_dec.1`, ...)."""
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner), leaf, value)


@torch.no_grad()
def _clip_divisors(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """[arms]: what each arm's own gradients are divided by to clip them (`optimizer.clip_divisor`)."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # [parameters, arms]
    return clip_divisor(torch.linalg.vector_norm(norms, dim=0), max_norm)


@torch.no_grad()
def _adam_step(arms: list[tuple[int, ArmRun]], grads: list[torch.Tensor], divisor: torch.Tensor) -> None:
    """Each arm's Adam step (its own rate) on its gradients divided by `divisor`; `arms` are (slice, arm) pairs.

    An arm's step is one call of torch's fused Adam kernel (the one its optimiser runs alone) on its
    parameters (views of the stack) and its optimiser's state, so checkpoints and a resumed run see
    an ordinary Adam. The kernel divides the gradients as it reads them: clipping takes no pass.
    """
    group = arms[0][1].optimizer.param_groups[0]
    (beta1, beta2), eps = group["betas"], group["eps"]
    for a, arm in arms:
        params, exp_avgs, exp_avg_sqs, counts = _adam_state(arm)
        torch._foreach_add_(counts, 1)
        torch._fused_adam_(
            params, [g[a] for g in grads], exp_avgs, exp_avg_sqs, [], counts,
            lr=arm.optimizer.param_groups[0]["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps,
            amsgrad=False, maximize=False, grad_scale=divisor[a],
        )  # fmt: skip


def _adam_state(arm: ArmRun) -> tuple[list[torch.Tensor], ...]:
    """(parameters, first moments, second moments, step counts) of the arm's Adam, started as torch starts it."""
    group = arm.optimizer.param_groups[0]
    params, exp_avgs, exp_avg_sqs, counts = [], [], [], []
    for p in group["params"]:
        state = arm.optimizer.state[p]
        if not state:  # torch's fused kernel counts steps on the device
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        params.append(p)
        exp_avgs.append(state["exp_avg"])
        exp_avg_sqs.append(state["exp_avg_sq"])
        counts.append(state["step"])
    return params, exp_avgs, exp_avg_sqs, counts
