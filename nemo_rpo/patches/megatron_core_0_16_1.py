"""The patches for megatron-core 0.16.1 (and the torch 2.13 CPU build it runs on here).

Each :class:`~nemo_rpo.patches.Patch` names its target, the signature it expects there and why it
exists; the replacement functions below are the only code of the package that assigns to torch or
megatron attributes. The kernels the replacements call (the CPU device mode, oneDNN linear products, the
SwiGLU and RoPE autograd functions) live with their subsystems and patch nothing themselves.
"""

from __future__ import annotations

import contextlib
import functools
import queue
from collections.abc import Iterator
from typing import Any

import torch

from nemo_rpo.patches import Patch

# --------------------------------------------------------------------------------------------------
# cpu_import / cpu: the CPU execution layer (nemo_rpo.distributed.cpu_support)
# --------------------------------------------------------------------------------------------------


def _deferred_compile(original):  # noqa: ANN001, ANN202
    from nemo_rpo.distributed import cpu_support

    return cpu_support._deferred_compile(original)


def _with_mode(original):  # noqa: ANN001, ANN202
    from nemo_rpo.distributed import cpu_support

    return cpu_support._with_mode(original)


def _cpu_event(original):  # noqa: ANN001, ANN202
    from nemo_rpo.distributed.cpu_support import _CpuEvent

    return _CpuEvent


def _get_rng_state(original):  # noqa: ANN001, ANN202
    def get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
        return torch.get_rng_state()  # already a copy

    return get_rng_state


def _set_rng_state(original):  # noqa: ANN001, ANN202
    def set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
        torch.set_rng_state(new_state)

    return set_rng_state


def _rng_tracker_add(original):  # noqa: ANN001, ANN202
    def add(self, name: str, seed: int) -> None:  # noqa: ANN001
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        orig = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(orig)

    return add


def _rng_tracker_fork(original):  # noqa: ANN001, ANN202
    from megatron.core.tensor_parallel import random as mp_random

    @contextlib.contextmanager
    def fork(self, name: str = mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:  # noqa: ANN001
        # Megatron's fork also warns when the CPU state changes inside the fork; on CPU the tracked
        # state *is* the CPU state, so that warning would fire on every dropout. Same logic otherwise.
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        orig_state = torch.get_rng_state()
        orig_name = self._current_state_name
        if orig_name != "default-rng":
            self.states_[orig_name] = orig_state
        torch.set_rng_state(self.states_[name])
        self._current_state_name = name
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            if orig_name != "default-rng":
                orig_state = self.states_[orig_name]
            torch.set_rng_state(orig_state)
            self._current_state_name = orig_name

    return fork


def _controller_init(original):  # noqa: ANN001, ANN202
    from nemo_rpo.distributed.cpu_support import _mode_active

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN001
        # torch.Generator(device=torch.cuda.current_device()) is not a torch function call, so the mode
        # cannot rewrite it; report the CPU as the current device while the controller is built.
        current_device = torch.cuda.current_device
        torch.cuda.current_device = lambda: "cpu"
        try:
            with _mode_active():
                original(self, *args, **kwargs)
        finally:
            torch.cuda.current_device = current_device

    return __init__


def _linear(original):  # noqa: ANN001, ANN202
    from megatron.core.tensor_parallel import layers

    from nemo_rpo.distributed.cpu_support import _CpuLinear

    @functools.wraps(original)
    def linear(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel,  # noqa: ANN001, ANN202
               grad_output_buffer=None, wgrad_deferral_limit=0, async_grad_allreduce=None, tp_group=None):  # fmt: skip
        if gradient_accumulation_fusion or sequence_parallel or grad_output_buffer is not None:
            return original(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel,
                            grad_output_buffer, wgrad_deferral_limit, async_grad_allreduce, tp_group)  # fmt: skip
        if async_grad_allreduce is not None:
            allreduce_dgrad = async_grad_allreduce
        tp_group = layers.get_tensor_model_parallel_group_if_none(tp_group)
        return _CpuLinear.apply(input, weight, bias, allreduce_dgrad, tp_group)

    return linear


# --------------------------------------------------------------------------------------------------
# fast_paths: SwiGLU and RoPE (CPU and GPU)
# --------------------------------------------------------------------------------------------------


def _mlp_forward(original):  # noqa: ANN001, ANN202
    from nemo_rpo.models import mlp

    return mlp.forward


def _apply_rope(original):  # noqa: ANN001, ANN202
    from nemo_rpo.models import rope

    return rope.apply_rotary_pos_emb


# --------------------------------------------------------------------------------------------------
# distributed_optimizer: DistributedOptimizer with torch.optim.AdamW (no apex / Transformer Engine)
# --------------------------------------------------------------------------------------------------
# torch's Adam keeps a per-parameter ``step`` tensor in its state; megatron stores one ``step`` in the
# param groups instead and converts back and forth, with three mistakes, one fixed by each patch.
# With apex or Transformer Engine megatron uses FusedAdam, which keeps ``step`` in the param groups.


def _no_apex_or_te() -> bool:
    from megatron.core.optimizer import distrib_optimizer

    return not distrib_optimizer.HAVE_APEX_OR_TE


def _optimizer_state_dict(original):  # noqa: ANN001, ANN202
    def state_dict(self) -> dict:  # noqa: ANN001
        if len(self.optimizer.state) > 0:
            return original(self)
        inner = self.optimizer.state_dict()  # param groups are fresh dicts; safe to edit
        for group in inner["param_groups"]:
            del group["params"]
            group["step"] = 0
        result = {"optimizer": {k: v for k, v in inner.items() if k != "state"}}
        if self.grad_scaler:
            result["grad_scaler"] = self.grad_scaler.state_dict()
        return result

    return state_dict


def _optimizer_set_states(original):  # noqa: ANN001, ANN202
    def _set_main_param_and_optimizer_states(self, model_param: torch.nn.Parameter, tensors: dict) -> None:  # noqa: ANN001
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        state = self.optimizer.state[main_param]
        destinations = {"param": main_param, **{k: v for k, v in state.items() if k != "step"}}
        for key, destination in destinations.items():
            destination.copy_(tensors[key])
        return None

    return _set_main_param_and_optimizer_states


def _optimizer_load_state_dict(original):  # noqa: ANN001, ANN202
    def load_state_dict(self, state_dict: dict) -> None:  # noqa: ANN001
        original(self, state_dict)
        for state in self.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()

    return load_state_dict


# --------------------------------------------------------------------------------------------------
# checkpoint
# --------------------------------------------------------------------------------------------------


def _in_process_results_queue(original):  # noqa: ANN001, ANN202
    return queue.Queue() if original is None else original


_MCORE = "megatron.core"
_RANDOM = f"{_MCORE}.tensor_parallel.random"
_DIST_OPT = f"{_MCORE}.optimizer.distrib_optimizer:DistributedOptimizer"
_GPT = f"{_MCORE}.models.gpt.gpt_model:GPTModel"

PATCHES: tuple[Patch, ...] = (
    # cpu_import
    Patch(
        "cpu.deferred_compile", "torch:compile",
        "(model=None, *, fullgraph=False, dynamic=None, backend=None, mode=None, options=None, name=None, "
        "disable=False, recompile_limit=None, isolate_recompiles=False, shapes_spec=None)",
        "cpu_import", "megatron decorates its fused kernels with torch.compile at import (~3 s per process); "
        "a plain function is compiled at its first call instead, which a CPU run never makes",
        _deferred_compile,
    ),
    # cpu
    Patch("cpu.current_device", "torch.cuda:current_device", "()", "cpu",
          "megatron asks for the current CUDA device everywhere; 0 maps to the CPU in the device mode",
          lambda original: lambda: 0),
    Patch("cpu.synchronize", "torch.cuda:synchronize", "(device=None)", "cpu", "nothing to wait for on CPU",
          lambda original: lambda device=None: None),
    Patch("cpu.empty_cache", "torch.cuda:empty_cache", "()", "cpu", "no CUDA cache on CPU",
          lambda original: lambda: None),
    Patch("cpu.cuda_event", "torch.cuda:Event", "(enable_timing=False, blocking=False, interprocess=False, "
          "external=False)", "cpu", "megatron's timers record CUDA events; a perf_counter stand-in",
          _cpu_event),
    Patch("cpu.backward_mode", "torch.autograd.function:BackwardCFunction.apply", "(self, *args)", "cpu",
          "autograd runs custom backward functions (TP collectives, recompute) without the thread's device "
          "mode; re-enter it there", _with_mode),
    Patch("cpu.backward_mode_boxed", "torch.autograd.function:BackwardCFunction.apply_boxed", "(self, *args)",
          "cpu", "as cpu.backward_mode, for the boxed calling convention", _with_mode),
    Patch("cpu.recompute_mode", f"{_RANDOM}:CheckpointWithoutOutput._recompute", "(self, _)", "cpu",
          "megatron's output-discarding recompute runs from a backward hook, outside the device mode",
          _with_mode),
    Patch("cpu.get_rng_state", f"{_RANDOM}:_get_cuda_rng_state", "(device='cuda', clone=False, graph_safe=False)",
          "cpu", "torch.cuda.get_rng_state raises on a CPU build; the RNG tracker runs on the CPU generator",
          _get_rng_state),
    Patch("cpu.set_rng_state", f"{_RANDOM}:_set_cuda_rng_state", "(new_state, device=-1, graph_safe=False)",
          "cpu", "as cpu.get_rng_state", _set_rng_state),
    Patch("cpu.rng_tracker_add", f"{_RANDOM}:CudaRNGStatesTracker.add", "(self, name, seed)", "cpu",
          "torch.cuda.manual_seed silently does nothing on a CPU build; seed the CPU generator", _rng_tracker_add),
    Patch("cpu.rng_tracker_fork", f"{_RANDOM}:CudaRNGStatesTracker.fork", "(self, name='model-parallel-rng')",
          "cpu", "the tracked state is the CPU state; megatron's fork would warn at every dropout",
          _rng_tracker_fork),
    Patch("cpu.inference_generator",
          f"{_MCORE}.inference.text_generation_controllers.text_generation_controller:TextGenerationController.__init__",
          "(self, inference_wrapped_model, tokenizer, pp_group=None)", "cpu",
          "builds torch.Generator(device=cuda), which is no torch function call the device mode could see",
          _controller_init),
    Patch("cpu.linear", f"{_MCORE}.tensor_parallel.layers:linear_with_grad_accumulation_and_async_allreduce",
          "(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel, "
          "grad_output_buffer=None, wgrad_deferral_limit=0, async_grad_allreduce=None, tp_group=None)", "cpu",
          "large fp32 products through oneDNN, narrow ones in row blocks (cpu_support._CpuLinear); other cases "
          "go to megatron's", _linear),
    # fast_paths
    Patch("fast_paths.swiglu", f"{_MCORE}.transformer.mlp:MLP.forward", "(self, hidden_states, per_token_scale=None, "
          "**kwargs)", "fast_paths", "plain SwiGLU as one autograd function: no offset copy, no gradient cat "
          "(models/mlp.py); megatron's TransformerLayer passes the TP group only to MLP itself, so no subclass",
          _mlp_forward),
    Patch("fast_paths.rope", f"{_MCORE}.transformer.attention:apply_rotary_pos_emb",
          "(t, freqs, config, cu_seqlens=None, mscale=1.0, cp_group=None)", "fast_paths",
          "RoPE in two passes over q/k instead of seven (models/rope.py); megatron's attention calls this "
          "module-level name", _apply_rope),
    # distributed_optimizer
    Patch("dist_opt.state_dict", f"{_DIST_OPT}.state_dict", "(self)", "distributed_optimizer",
          "asserts one distinct step over the inner Adam state, which is empty before the first step: loading "
          "a checkpoint into a fresh optimizer failed; an empty state now reports step 0",
          _optimizer_state_dict, _no_apex_or_te),
    Patch("dist_opt.set_states", f"{_DIST_OPT}._set_main_param_and_optimizer_states", "(self, model_param, tensors)",
          "distributed_optimizer", "copied into every Adam state key, step included, which checkpoints never "
          "hold (KeyError: 'step'); step is now skipped (load_state_dict restores it)",
          _optimizer_set_states, _no_apex_or_te),
    Patch("dist_opt.load_state_dict", f"{_DIST_OPT}.load_state_dict", "(self, state_dict)", "distributed_optimizer",
          "gave every parameter the same step tensor, which Adam increments once per parameter (wrong bias "
          "correction after a resume); each parameter now gets its own copy",
          _optimizer_load_state_dict, _no_apex_or_te),
    # checkpoint
    Patch("checkpoint.results_queue", f"{_MCORE}.dist_checkpointing.strategies.filesystem_async:_results_queue",
          None, "checkpoint", "the writer's results queue is created on first use as a spawn-context manager "
          "queue (~4 s and a helper process that outlives a killed run); our saves are synchronous, so an "
          "in-process queue.Queue serves", _in_process_results_queue),
    # override: PolicyGPTModel (models/gpt.py) overrides these and calls megatron's
    Patch("gpt.preprocess", f"{_GPT}._preprocess", "(self, input_ids, position_ids, decoder_input=None, "
          "inference_context=None, packed_seq_params=None, padding_mask=None)", "override",
          "per-row rotary positions for the shared-prompt layout"),
    Patch("gpt.postprocess", f"{_GPT}._postprocess", "(self, hidden_states, input_ids, position_ids, labels, "
          "rotary_pos_emb, rotary_pos_cos, rotary_pos_sin, mtp_in_postprocess=None, loss_mask=None, "
          "decoder_input=None, attention_mask=None, inference_params=None, packed_seq_params=None, "
          "sequence_len_offset=None, runtime_gather_output=None, extra_block_kwargs=None, inference_context=None)",
          "override", "the LM head only over the loss mask's columns; the shared-prompt layout's gather"),
    Patch("gpt.language_model_loss", f"{_GPT}.compute_language_model_loss", "(self, labels, logits)", "override",
          "the TP=1 log-softmax NLL in fewer passes (models/logps.py)"),
)  # fmt: skip
