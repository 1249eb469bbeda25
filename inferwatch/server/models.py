"""The served networks and the runners that execute a batch of them on one device.

Two classifiers, so the metrics show more than one ``model_name``: a transformer text
classifier over UTF-8 bytes (no tokenizer to download) and a small image CNN; and a tiny causal
language model over bytes (:class:`CausalLM`) for the OpenAI-style endpoints. Weights are
random with a fixed seed, or a state dict from a file; nothing is downloaded. Runners are
called from the device's worker thread with a list of items and return one answer per item;
padding masks make an item's answer independent of its batch-mates.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

TEXT_LABELS = (
    "business",
    "entertainment",
    "health",
    "politics",
    "science",
    "sports",
    "technology",
    "world",
)
IMAGE_LABELS = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Byte-level vocabulary: 256 byte values, then padding and a leading classification token
# (which also gives an empty text one position to attend to).
PAD_TOKEN = 256
CLS_TOKEN = 257
VOCAB_SIZE = 258


@dataclass(frozen=True)
class TextConfig:
    width: int = 128
    heads: int = 4
    layers: int = 2
    feedforward: int = 256
    max_length: int = 128  # bytes per text; longer texts are truncated
    labels: tuple[str, ...] = TEXT_LABELS


@dataclass(frozen=True)
class ImageConfig:
    channels: int = 3
    size: int = 32  # images are channels x size x size, float32
    width: int = 32
    labels: tuple[str, ...] = IMAGE_LABELS


@dataclass(frozen=True)
class LLMConfig:
    width: int = 128
    heads: int = 4
    layers: int = 2
    feedforward: int = 256
    context: int = 512  # tokens (bytes) of prompt plus output at most


# Presets for `--model-size`: tiny keeps the tests fast on two CPU cores; base gives a GPU
# enough work per batch for batching to matter.
MODEL_SIZES: dict[str, tuple[TextConfig, ImageConfig]] = {
    "tiny": (
        TextConfig(width=32, heads=2, layers=1, feedforward=64, max_length=64),
        ImageConfig(width=8),
    ),
    "small": (TextConfig(), ImageConfig()),
    "base": (
        TextConfig(width=512, heads=8, layers=6, feedforward=2048, max_length=128),
        ImageConfig(width=64),
    ),
}
LLM_SIZES: dict[str, LLMConfig] = {
    "tiny": LLMConfig(width=64, heads=2, layers=2, feedforward=128, context=256),
    "small": LLMConfig(),
    "base": LLMConfig(width=512, heads=8, layers=6, feedforward=2048, context=1024),
}

# The language model's vocabulary: the 256 byte values, then beginning and end of sequence
# and padding. It reads any bytes; it writes printable ASCII and newlines only (the rest is
# masked out when sampling), so a token is one character of its output and every prefix of
# its output is valid UTF-8.
LM_BOS = 256
LM_EOS = 257
LM_PAD = 258
LM_VOCAB_SIZE = 259
LM_OUTPUT_TOKENS: tuple[int, ...] = (10, *range(32, 127), LM_EOS)
# Added to the end-of-sequence logit. Random weights give every output token about the same
# chance (EOS ~1% a step), and greedy decoding would end some prompts' answers at once; with
# this, greedy answers run to max_tokens and a sampled one ends on its own ~0.2% of the steps.
LM_EOS_BIAS = -1.5


class TextClassifier(nn.Module):
    """Byte embeddings, a transformer encoder, masked mean pooling, a linear head."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB_SIZE, config.width, padding_idx=PAD_TOKEN)
        self.position = nn.Embedding(config.max_length + 1, config.width)
        layer = nn.TransformerEncoderLayer(
            config.width, config.heads, config.feedforward, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, len(config.labels))

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        hidden = self.embed(tokens) + self.position(positions)
        hidden = self.encoder(hidden, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(1) / keep.sum(1)
        result: torch.Tensor = self.head(self.norm(pooled))
        return result


class ImageClassifier(nn.Module):
    """Three conv blocks, global average pooling, a linear head."""

    def __init__(self, config: ImageConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.features = nn.Sequential(
            nn.Conv2d(config.channels, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(4 * w, len(config.labels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.head(self.features(images).flatten(1))
        return result


def encode_text(text: str, max_length: int) -> bytes:
    """The byte tokens of ``text`` (UTF-8), truncated to ``max_length``."""
    return text.encode("utf-8", errors="replace")[:max_length]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is usable, else the CPU; ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: no CUDA GPU is usable here (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu or auto"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def load_state_dict(module: nn.Module, path: str | Path) -> None:
    """Load weights saved with ``torch.save(model.state_dict(), path)``; a clear error if not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"cannot read weights from {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"weights in {path} do not fit {type(module).__name__}: {exc}") from exc


class ModelRunner:
    """One model on one device: turns a list of items into a list of probability rows.

    ``predict_batch`` runs on the device's worker thread. On CUDA, inputs go through pinned
    host memory with non-blocking copies and the forward pass runs under autocast (bf16 where
    supported, else fp16); probabilities are computed in float32 either way.
    """

    kind = ""
    # The names of the module's inputs (in ``encode``'s order), for an ONNX export.
    input_names: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        version: str,
        module: nn.Module,
        labels: Sequence[str],
        device: torch.device,
    ) -> None:
        self.name = name
        self.version = version
        self.labels = tuple(labels)
        self.platform = "pytorch"  # what runs the module: pytorch or onnxruntime
        self._place(module, device)

    def _place(self, module: nn.Module, device: torch.device) -> None:
        self.device = device
        self.module = module.to(device).eval()
        self.cuda = device.type == "cuda"
        self.amp_dtype: torch.dtype | None = None
        if self.cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def variant(
        self, version: str, module: nn.Module, device: torch.device, platform: str = "pytorch"
    ) -> ModelRunner:
        """This runner with another module (a quantized or exported copy) as another version:
        same name, labels and input encoding, so every version answers the same requests."""
        other = copy.copy(self)
        other.version = version
        other.platform = platform
        other._place(module, device)
        return other

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def encode(self, items: Sequence[Any]) -> tuple[torch.Tensor, ...]:
        """The module's input tensors for a batch of items, on the CPU."""
        raise NotImplementedError

    def dynamic_axes(self) -> tuple[dict[int, str], ...]:
        """For each of ``encode``'s tensors, its axes that vary between batches (by name)."""
        raise NotImplementedError

    def axis_limits(self) -> dict[str, int]:
        """The largest size of each named dynamic axis."""
        return {"batch": 1 << 16}

    def sample_items(self, count: int, seed: int = 0) -> list[Any]:
        """A fixed set of ``count`` varied items (the same for a seed), to compare versions."""
        raise NotImplementedError

    def _forward(self, items: Sequence[Any]) -> torch.Tensor:
        result: torch.Tensor = self.module(*(self._to_device(t) for t in self.encode(items)))
        return result

    def predict_batch(self, items: Sequence[Any]) -> list[list[float]]:
        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast("cuda", dtype=self.amp_dtype):
                    logits = self._forward(items)
            else:
                logits = self._forward(items)
            probabilities = logits.float().softmax(-1).cpu()
        rows: list[list[float]] = probabilities.tolist()
        return rows

    def example_item(self) -> Any:
        raise NotImplementedError

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run each batch size once, so first requests don't pay for allocation and autotuning."""
        for size in batch_sizes:
            self.predict_batch([self.example_item()] * size)
        if self.cuda:
            torch.cuda.synchronize(self.device)


class TextRunner(ModelRunner):
    """Items are the UTF-8 bytes of one text (see :func:`encode_text`)."""

    kind = "text"
    input_names = ("tokens", "padding")

    def __init__(
        self,
        name: str,
        version: str,
        config: TextConfig,
        device: torch.device,
        weights: str | Path | None = None,
    ) -> None:
        module = build_text_model(config)
        if weights is not None:
            load_state_dict(module, weights)
        super().__init__(name, version, module, config.labels, device)
        self.config = config

    def encode(self, items: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
        length = 1 + max(len(item) for item in items)
        tokens = torch.full((len(items), length), PAD_TOKEN, dtype=torch.long)
        tokens[:, 0] = CLS_TOKEN
        for row, item in enumerate(items):
            if item:
                tokens[row, 1 : 1 + len(item)] = torch.tensor(list(item), dtype=torch.long)
        return tokens, tokens == PAD_TOKEN

    def dynamic_axes(self) -> tuple[dict[int, str], ...]:
        return ({0: "batch", 1: "length"}, {0: "batch", 1: "length"})

    def axis_limits(self) -> dict[str, int]:
        return {**super().axis_limits(), "length": self.config.max_length + 1}

    def sample_items(self, count: int, seed: int = 0) -> list[bytes]:
        generator = torch.Generator().manual_seed(seed)
        items = []
        for i in range(count):
            length = (i * 7919) % (self.config.max_length + 1)  # lengths spread over 0..max
            values = torch.randint(32, 127, (length,), generator=generator)  # printable ASCII
            items.append(bytes(values.tolist()))
        return items

    def example_item(self) -> bytes:
        return b"x" * self.config.max_length


class ImageRunner(ModelRunner):
    """Items are float32 tensors of shape (channels, size, size)."""

    kind = "image"
    input_names = ("images",)

    def __init__(
        self,
        name: str,
        version: str,
        config: ImageConfig,
        device: torch.device,
        weights: str | Path | None = None,
    ) -> None:
        module = build_image_model(config)
        if weights is not None:
            load_state_dict(module, weights)
        super().__init__(name, version, module, config.labels, device)
        self.config = config

    @property
    def item_shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.size, self.config.size)

    def encode(self, items: Sequence[torch.Tensor]) -> tuple[torch.Tensor]:
        return (torch.stack(list(items)),)

    def dynamic_axes(self) -> tuple[dict[int, str], ...]:
        return ({0: "batch"},)

    def sample_items(self, count: int, seed: int = 0) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return list(torch.rand((count, *self.item_shape), generator=generator).unbind(0))

    def example_item(self) -> torch.Tensor:
        return torch.zeros(self.item_shape)


class CausalLM(nn.Module):
    """A decoder-only transformer: byte embeddings plus learned positions, causal
    self-attention blocks (pre-norm), a linear head over the vocabulary."""

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(LM_VOCAB_SIZE, config.width, padding_idx=LM_PAD)
        self.position = nn.Embedding(config.context, config.width)
        layer = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            config.feedforward,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, LM_VOCAB_SIZE)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits for every position of ``tokens`` (batch, length). Sequences padded on the
        right need no padding mask: under the causal mask no real position sees a later one."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        hidden = self.embed(tokens) + self.position(positions)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        hidden = self.blocks(hidden, mask=mask, is_causal=True)
        result: torch.Tensor = self.head(self.norm(hidden))
        return result


@dataclass
class DecodeStep:
    """One decoding step of one generation: its whole context so far (prompt and output), how
    to pick the next token (``temperature`` 0: greedy) and the generation's own RNG."""

    tokens: list[int]
    temperature: float = 0.0
    generator: torch.Generator | None = None


class LLMRunner:
    """The language model on one device: ``predict_batch`` takes decoding steps of any
    generations and returns each one's next token, from one forward pass.

    There is no KV cache: each step runs the whole context again. That keeps a step stateless
    (any steps can share a batch, a generation can join or leave between steps) and exact, and
    costs little at these sizes.
    """

    kind = "llm"

    def __init__(
        self,
        name: str,
        version: str,
        config: LLMConfig,
        device: torch.device,
        weights: str | Path | None = None,
    ) -> None:
        module = build_llm(config)
        if weights is not None:
            load_state_dict(module, weights)
        self.name = name
        self.version = version
        self.config = config
        self.device = device
        self.module = module.to(device).eval()
        self.cuda = device.type == "cuda"
        self.amp_dtype: torch.dtype | None = None
        if self.cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._allowed = torch.full((LM_VOCAB_SIZE,), float("-inf"))
        self._allowed[list(LM_OUTPUT_TOKENS)] = 0.0
        self._allowed[LM_EOS] = LM_EOS_BIAS

    def _logits(self, items: Sequence[DecodeStep]) -> torch.Tensor:
        lengths = [len(item.tokens) for item in items]
        tokens = torch.full((len(items), max(lengths)), LM_PAD, dtype=torch.long)
        for row, item in enumerate(items):
            tokens[row, : lengths[row]] = torch.tensor(item.tokens, dtype=torch.long)
        if self.cuda:
            tokens = tokens.pin_memory().to(self.device, non_blocking=True)
        logits = self.module(tokens)
        last = torch.tensor([n - 1 for n in lengths], device=logits.device)
        chosen: torch.Tensor = logits[torch.arange(len(items), device=logits.device), last]
        return chosen

    def predict_batch(self, items: Sequence[DecodeStep]) -> list[int]:
        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast("cuda", dtype=self.amp_dtype):
                    logits = self._logits(items)
            else:
                logits = self._logits(items)
            logits = logits.float().cpu() + self._allowed
        out = []
        for row, item in enumerate(items):
            if item.temperature <= 0:
                out.append(int(logits[row].argmax()))
            else:
                probabilities = (logits[row] / item.temperature).softmax(-1)
                out.append(int(torch.multinomial(probabilities, 1, generator=item.generator)))
        return out

    def example_item(self) -> DecodeStep:
        return DecodeStep([LM_BOS] * self.config.context)

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        for size in batch_sizes:
            self.predict_batch([self.example_item()] * size)
        if self.cuda:
            torch.cuda.synchronize(self.device)


def _seeded(seed: int, build: Any) -> Any:
    # A private RNG state: the same seed gives the same weights whatever ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_text_model(config: TextConfig, seed: int = 0) -> TextClassifier:
    return _seeded(seed, lambda: TextClassifier(config))


def build_image_model(config: ImageConfig, seed: int = 1) -> ImageClassifier:
    return _seeded(seed, lambda: ImageClassifier(config))


def build_llm(config: LLMConfig, seed: int = 2) -> CausalLM:
    return _seeded(seed, lambda: CausalLM(config))
