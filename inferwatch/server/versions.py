"""Versions of one model served side by side: fp32 eager, int8, ONNX Runtime.

Version "1" is the model as built (fp32, eager PyTorch, on the configured device); "2" is a
copy with its Linear layers quantized to int8 by PyTorch's dynamic quantization (on the CPU:
PyTorch's quantized kernels are CPU kernels); "3" is the model exported to ONNX with a dynamic
batch axis (and sequence axis for text) and run by ONNX Runtime (CUDA when the model runs on
a GPU and ONNX Runtime has its CUDA provider, else CPU). Each version is a runner of its own:
its own batcher, its own ``model_version`` label on the metrics.

A version that cannot be built here (no quantized engine, onnxruntime or onnxscript missing,
an export failure) is skipped with one log line; the others are served. Exports are cached
on disk, keyed by a hash of the weights and configuration, so a restart loads the ONNX file
instead of exporting again.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inferwatch.server.models import ModelRunner

log = logging.getLogger(__name__)

EAGER = "1"
INT8 = "2"
ONNX = "3"
VERSIONS: tuple[str, ...] = (EAGER, INT8, ONNX)
DESCRIPTIONS = {
    EAGER: "fp32 eager PyTorch",
    INT8: "int8 dynamic quantization",
    ONNX: "ONNX Runtime",
}
# Items in the fixed input set each version is compared with version 1 on, at start.
AGREEMENT_ITEMS = 64
CACHE_ENV = "INFERWATCH_ONNX_CACHE_DIR"
ONNX_OPSET = 18


class VersionUnavailable(Exception):
    """A version that cannot be built here; the message says why, for the log line."""


def default_cache_dir() -> Path:
    """``$INFERWATCH_ONNX_CACHE_DIR``, else ``$XDG_CACHE_HOME/inferwatch/onnx``, else
    ``~/.cache/inferwatch/onnx``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inferwatch" / "onnx"


# --- version 2: int8 dynamic quantization ----------------------------------------------------


def _no_fast_path(module: nn.Module, args: Any, output: Any) -> None:
    """A forward hook: its presence turns off nn.TransformerEncoderLayer's fused fast path,
    which reads ``linear1.weight`` as a tensor (a quantized Linear's ``weight`` is a method)."""


def quantize(module: nn.Module) -> nn.Module:
    """A CPU copy of ``module`` with every Linear layer int8 (weights ahead of time,
    activations per batch). Attention projections stay fp32 (PyTorch does not quantize them)."""
    engines = torch.backends.quantized.supported_engines
    if not any(engine in engines for engine in ("x86", "fbgemm", "qnnpack", "onednn")):
        raise VersionUnavailable(f"this PyTorch has no quantized engine (it has {engines})")
    source = copy.deepcopy(module).to("cpu").float().eval()
    quantize_dynamic = torch.ao.quantization.quantize_dynamic
    with warnings.catch_warnings():  # the eager-mode API's deprecation notice
        warnings.simplefilter("ignore")
        quantized: nn.Module = quantize_dynamic(source, {nn.Linear}, dtype=torch.qint8)
    for layer in quantized.modules():
        if isinstance(layer, nn.TransformerEncoderLayer):
            layer.register_forward_hook(_no_fast_path)
    return quantized


def linear_share(module: nn.Module) -> tuple[int, int, list[str]]:
    """(parameters in Linear layers, all parameters, the kinds of layer holding the rest):
    how much int8 dynamic quantization covers, and what it leaves in fp32."""
    linear = 0
    others: set[str] = set()
    for layer in module.modules():
        own = sum(p.numel() for p in layer.parameters(recurse=False))
        if type(layer) is nn.Linear:
            linear += own
        elif own:
            others.add(type(layer).__name__)
    return linear, sum(p.numel() for p in module.parameters()), sorted(others)


# --- version 3: ONNX Runtime -----------------------------------------------------------------


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind nn.Module's call: torch tensors in, logits out (CPU)."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        feed = {name: t.numpy() for name, t in zip(self.input_names, tensors, strict=True)}
        (logits,) = self.session.run(None, feed)
        return torch.from_numpy(logits)


def model_hash(runner: ModelRunner) -> str:
    """What an export depends on: the module's class, configuration and weights, torch."""
    digest = hashlib.sha256()
    config = getattr(runner, "config", None)
    header = f"{type(runner.module).__name__}|{config!r}|{torch.__version__}|{ONNX_OPSET}"
    digest.update(header.encode())
    for name, tensor in sorted(runner.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def export_onnx(runner: ModelRunner, path: Path) -> None:
    """Export ``runner``'s module to ``path`` with its dynamic axes (torch's dynamo exporter:
    the TorchScript one bakes the sequence length into the attention's reshapes)."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        raise VersionUnavailable(f"onnxscript is not installed ({exc})") from exc
    module = copy.deepcopy(runner.module).to("cpu").float().eval()
    example = runner.encode(runner.sample_items(3)[1:])  # two items of different lengths
    limits = runner.axis_limits()
    dims = {name: torch.export.Dim(name, min=1, max=limit) for name, limit in limits.items()}
    shapes = tuple(
        {axis: dims[name] for axis, name in axes.items()} for axes in runner.dynamic_axes()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    # The exporter's own chatter ("torchvision is not installed", optimizer passes) stays out.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        # The exporter prints its progress; stdout is where `inferwatch serve` says it listens.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                example,
                None,
                dynamo=True,
                input_names=list(runner.input_names),
                output_names=["logits"],
                dynamic_shapes=shapes,
                opset_version=ONNX_OPSET,
                verbose=False,
            )
            assert program is not None
            program.save(tmp)
        os.replace(tmp, path)  # atomic: a concurrent start never reads half a file
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def onnx_providers(device: torch.device) -> list[str]:
    """CUDA first when the model runs on a GPU and ONNX Runtime has the provider, then CPU."""
    import onnxruntime

    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(onnxruntime: Any, path: Path, device: torch.device) -> Any:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Idle threads sleep instead of spinning: the CPU is shared with PyTorch's versions and
    # the event loop.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=onnx_providers(device))


def onnx_module(runner: ModelRunner, cache_dir: Path) -> tuple[OnnxModule, str]:
    """The runner's module as an ONNX Runtime session (exported or loaded from the cache),
    and the provider it runs on."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise VersionUnavailable(f"onnxruntime is not installed ({exc})") from exc
    path = cache_dir / f"{runner.name}-{model_hash(runner)}.onnx"
    if path.exists():
        try:
            session = _session(onnxruntime, path, runner.device)
            log.info("model %s: ONNX export loaded from %s", runner.name, path)
            return OnnxModule(session), session.get_providers()[0]
        except Exception as exc:  # a damaged cache file: export again over it
            log.warning(
                "model %s: cached ONNX file %s unusable (%s); exporting again",
                runner.name,
                path,
                exc,
            )
    try:
        export_onnx(runner, path)
    except OSError:  # an unwritable cache: export to a private directory instead
        path = Path(tempfile.mkdtemp(prefix="inferwatch-onnx-")) / path.name
        export_onnx(runner, path)
    log.info("model %s: exported to ONNX at %s", runner.name, path)
    session = _session(onnxruntime, path, runner.device)
    return OnnxModule(session), session.get_providers()[0]


# --- building the versions -------------------------------------------------------------------


def _int8(runner: ModelRunner, cache_dir: Path) -> ModelRunner:
    quantized = quantize(runner.module)
    linear, total, others = linear_share(runner.module)
    if not linear:
        raise VersionUnavailable("it has no Linear layer to quantize")
    if linear < total:
        log.info(
            "model %s: int8 dynamic quantization covers its Linear layers, %.0f%% of its "
            "parameters; the rest stays fp32 (%s)",
            runner.name,
            100 * linear / total,
            ", ".join(others),
        )
    return runner.variant(INT8, quantized, torch.device("cpu"))


def _onnx(runner: ModelRunner, cache_dir: Path) -> ModelRunner:
    module, provider = onnx_module(runner, cache_dir)
    log.info("model %s: version %s runs on ONNX Runtime's %s", runner.name, ONNX, provider)
    # Inputs are built on the CPU; ONNX Runtime moves them to the GPU itself.
    return runner.variant(ONNX, module, torch.device("cpu"), platform="onnxruntime")


_BUILDERS: dict[str, Callable[[ModelRunner, Path], ModelRunner]] = {INT8: _int8, ONNX: _onnx}


def build_versions(
    runner: ModelRunner, versions: Sequence[str], cache_dir: Path | None = None
) -> list[ModelRunner]:
    """The requested versions of ``runner`` (version 1), each that can be built here; a
    version that cannot is logged, once, and left out."""
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    built = [runner] if EAGER in versions else []
    for version in versions:
        if version == EAGER:
            continue
        try:
            built.append(_BUILDERS[version](runner, cache_dir))
        except Exception as exc:  # any failure costs this version only
            log.warning(
                "model %s: version %s (%s) is not served: %s",
                runner.name,
                version,
                DESCRIPTIONS[version],
                exc,
            )
    return built


# --- agreement with version 1 ----------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """How a version's answers compare with version 1's on the same items."""

    items: int
    top1: float  # share of items with the same best label, 0-1
    max_abs_diff: float  # largest difference of any probability


def _rows(runner: ModelRunner, items: Sequence[Any], batch: int) -> torch.Tensor:
    rows: list[list[float]] = []
    for start in range(0, len(items), batch):
        rows.extend(runner.predict_batch(list(items[start : start + batch])))
    return torch.tensor(rows)


def agreement(
    reference: ModelRunner, candidate: ModelRunner, items: Sequence[Any], batch: int = 16
) -> Agreement:
    """Compare ``candidate``'s probabilities with ``reference``'s on ``items``."""
    expected = _rows(reference, items, batch)
    got = _rows(candidate, items, batch)
    same = (expected.argmax(-1) == got.argmax(-1)).float().mean().item()
    return Agreement(len(items), same, (expected - got).abs().max().item())


def agreement_line(name: str, version: str, result: Agreement) -> str:
    """The start-up log line for one version."""
    return (
        f"model {name} version {version} ({DESCRIPTIONS[version]}) agrees with version 1 "
        f"on {100 * result.top1:.1f}% of {result.items} fixed inputs (top-1); "
        f"max abs probability difference {result.max_abs_diff:.2e}"
    )
