"""Sharded training with PyTorch's own FSDP2 (``train.sharding: fsdp``), and checkpoints that reshard.

With more than one process, the policy's parameters, gradients and optimizer state are sharded across the
processes: ``fully_shard`` on every decoder layer, then on the :class:`LogProbModel` root (which keeps the
embedding, final norm and head). The same code runs on CPU processes (gloo) and on GPUs (NCCL); the
process group is the one accelerate (``accelerate launch``) or ``torchrun`` set up.

The log-prob engine calls the decoder and the head directly (chunked log-probs), and a reference built on
the policy (``adapter``) or a sharded frozen copy (``copy``) runs the decoder outside the root's
``forward``: a pre-hook on the decoder gathers the root's parameters first. Gradient accumulation
reduce-scatters every micro-batch (gradients stay sharded; the sum of the reductions is the reduction of
the sum), and clipping reads the global norm of the sharded gradients. A reference updated during training
(TR-DPO) is a frozen copy sharded like the policy, so each process mixes its own shards
(:func:`tether.engine.reference.mix_parameters`); its checkpoint file is gathered (:func:`save_weights`).

A checkpoint of a run with ``train.sharding: fsdp`` (on any process count) holds the *full* state, written
by the first process: ``model.safetensors`` (the same names as an unsharded checkpoint),
``optimizer.safetensors`` (every tensor of the optimizer state, ``state.<parameter>.<name>``) and
``optimizer.json`` (the parameter groups: hyper-parameters and parameter names). Nothing is pickled; a run
saved on 2 processes resumes on 1 and vice versa. With one process nothing is sharded (a note says so),
but checkpoints are written in this format so that the run can move between process counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from tether.config import TrainConfig
from tether.engine.logprobs import LogProbModel, decoder_and_head
from tether.errors import TetherError

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_GROUPS = "optimizer.json"
_RUNTIME_FLAGS = ("foreach", "fused", "capturable", "differentiable")  # how this process steps, not state


def wanted(cfg: TrainConfig) -> bool:
    """Whether checkpoints use the full-state format (``train.sharding: fsdp``, any process count)."""
    return cfg.sharding == "fsdp"


def active(cfg: TrainConfig, world: int) -> bool:
    """Whether the policy is actually sharded: ``fsdp`` and more than one process."""
    return cfg.sharding == "fsdp" and world > 1


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as e:  # torch < 2.6
        raise TetherError(
            f"train.sharding: fsdp needs torch ≥ 2.6 (FSDP2's fully_shard); this is torch {torch.__version__}"
        ) from e
    return fully_shard


def _layers(decoder: nn.Module) -> list[nn.Module]:
    """The decoder's blocks: the ``nn.ModuleList`` named ``layers``/``h``/``blocks``, else the largest one."""
    for name in ("layers", "h", "blocks"):
        mods = getattr(decoder, name, None)
        if isinstance(mods, nn.ModuleList):
            return list(mods)
    lists = [m for m in decoder.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters()), default=[]))


def shard(model: LogProbModel, device: torch.device, world: int) -> LogProbModel:
    """Apply FSDP2 in place: each decoder layer, then the root. Returns ``model`` (now an FSDP module)."""
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = _fully_shard()
    mesh = init_device_mesh(device.type, (world,))
    decoder, _, _ = decoder_and_head(model.model)
    for layer in _layers(decoder):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # The root must initialise first (the first state to run forward becomes the root): the reference may
    # run the decoder before the policy's own forward in a step.
    model._get_fsdp_state()._lazy_init()  # type: ignore[operator]
    decoder.register_forward_pre_hook(lambda *_: model.unshard())  # type: ignore[operator]
    return model


def max_abs(params: list[Tensor]) -> float:
    """The largest |weight| over (possibly sharded) parameters, the same on every process."""
    from torch.distributed.tensor import DTensor

    local = [p.to_local() if isinstance(p, DTensor) else p for p in params]
    with torch.no_grad():
        m = max((p.detach().abs().max().item() for p in local if p.numel()), default=0.0)
    if any(isinstance(p, DTensor) for p in params):
        import torch.distributed as dist

        t = torch.tensor(m, dtype=torch.float64, device=params[0].device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        m = t.item()
    return m


def clip_grad_norm_(params: list[Tensor], max_norm: float) -> Tensor:
    """Clip sharded gradients by their global norm; returns that norm (a plain tensor)."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


# ---------------------------------------------------------------------------------------------------
# Full-state checkpoints (safetensors + JSON, no pickles)
# ---------------------------------------------------------------------------------------------------


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _dedup(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Tied weights once (the first name), as an unsharded checkpoint stores them; contiguous CPU tensors."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        if id(v) in seen or (v.numel() and v.untyped_storage().data_ptr() in seen):
            continue
        seen.update({id(v), v.untyped_storage().data_ptr()} if v.numel() else {id(v)})
        out[k] = v.detach().cpu().contiguous()
    return out


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's state on the first process (CPU tensors; empty elsewhere). Every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def save(d: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, is_main: bool) -> None:
    """Write the full model (and optimizer) state into ``d`` from the first process. Every process calls it."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if is_main:
        d.mkdir(parents=True, exist_ok=True)
    save_weights(d / MODEL_FILE, model, is_main)
    osd = (
        None
        if optimizer is None
        else get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    )
    if not is_main or osd is None:
        return
    tensors, scalars = {}, {}
    for name, entries in osd["state"].items():
        for key, v in entries.items():
            if isinstance(v, Tensor):
                tensors[f"state.{name}.{key}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{name}.{key}"] = v
    save_file(tensors, str(d / OPTIMIZER_TENSORS), metadata={"format": "pt"})
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in osd["param_groups"]]
    (d / OPTIMIZER_GROUPS).write_text(json.dumps({"param_groups": groups, "scalars": scalars}, indent=1))


def holds_full_state(d: Path) -> bool:
    """Whether ``d`` is a full-state checkpoint with optimizer state (see the module's docstring)."""
    return (d / OPTIMIZER_GROUPS).exists() or (d / OPTIMIZER_TENSORS).exists()


def save_weights(path: Path, model: nn.Module, is_main: bool, prefix: str = "") -> None:
    """``model``'s whole weights (sharded or not) as one safetensors file written by the first process: tied
    weights once, names without ``prefix``. Every process calls it."""
    from safetensors.torch import save_file

    state = _dedup(full_model_state(model))
    if is_main:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
        save_file(state, str(path), metadata={"format": "pt"})


def load_weights(path: Path, model: nn.Module, prefix: str = "") -> None:
    """A file of :func:`save_weights` (or any safetensors file of the model's names, tied weights under any
    one of their names) into ``model``, sharded or not. Raises on a mismatch."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    state = {prefix + k: v for k, v in load_file(str(path)).items()}
    tied: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(p), []).append(n)
    for names in tied.values():  # tied weights: the file holds one of the names
        have = next((n for n in names if n in state), None)
        for n in names:
            if have is not None and n not in state:
                state[n] = state[have]
    result = set_model_state_dict(model, state, options=_options(strict=False))
    if result.missing_keys or result.unexpected_keys:
        raise TetherError(
            f"{path.name}: does not match the model ({len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected tensors)"
        )


def _load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, groups: list) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if len(groups) != len(optimizer.param_groups):
        raise TetherError(
            f"optimizer: {len(groups)} parameter groups, the run's optimizer has {len(optimizer.param_groups)}"
        )
    for g, mine in zip(groups, optimizer.param_groups, strict=True):
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        for flag in _RUNTIME_FLAGS:  # this process's way of stepping (fused or not), not saved state
            if flag in mine:
                g[flag] = mine[flag]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=_options())


def load(d: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load a full-state checkpoint into a sharded or plain model (and optimizer). Every process reads the
    files (a shared file system, as for the rest of the run directory). Raises on any mismatch."""
    from safetensors.torch import load_file

    load_weights(d / MODEL_FILE, model)
    if optimizer is None:
        return
    meta = json.loads((d / OPTIMIZER_GROUPS).read_text())
    state: dict[str, dict] = {}
    for key, v in load_file(str(d / OPTIMIZER_TENSORS)).items():
        name, sub = key.removeprefix("state.").rsplit(".", 1)
        state.setdefault(name, {})[sub] = v
    for key, v in meta.get("scalars", {}).items():
        name, sub = key.rsplit(".", 1)
        state.setdefault(name, {})[sub] = v
    _load_optimizer(model, optimizer, state, meta["param_groups"])


def load_accelerate(d: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load an unsharded run's checkpoint (accelerate's layout: ``model.safetensors``, ``optimizer.bin`` of
    tensors, read with ``weights_only=True``) into a sharded model: the optimizer's parameter numbers are
    the trainable parameters in the model's order, as the trainer built the optimizer."""
    from accelerate.utils.other import load as torch_load

    load_weights(d / MODEL_FILE, model)
    osd = torch_load(d / "optimizer.bin", map_location="cpu", weights_only=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    state = {names[int(i)]: v for i, v in osd["state"].items()}
    groups = [{**g, "params": [names[int(i)] for i in g["params"]]} for g in osd["param_groups"]]
    _load_optimizer(model, optimizer, state, groups)
