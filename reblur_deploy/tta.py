"""Test-time adaptation (TTA): Algorithm A of Nah et al., ICLR 2022, and its practical variants.

Algorithm A, for one blurry image B, deblurring module MD and frozen reblurring module MR::

    L0 = MD(B)
    repeat N times:  loss = mean |MR(MD(B)) − MD(B)*|   (* = without gradient)
                     Adam step (lr 3e-6) on MD's parameters only
    LN = MD(B);  return match_histograms(LN, L0)

MD is then restored, so one image never influences the next. The step-1 forward pass is MD(B)
with the initial weights, so L0 costs nothing extra.

One departure by default, ``scale``: MR judges MD(B) shrunk by area averaging, ×2 at 720p and
more for larger frames (``losses.blur_scale``: 1080p ×3, 4K ×6; ``scale=1`` is the paper's full
resolution), where a camera frame's blur fits MR's receptive field; see ``losses.BLUR_SCALE``
and docs/TTA.md.

Variants (all off by default, so the defaults are otherwise Algorithm A):

* ``crop``/``crops``: each step adapts on ``crops`` random crops instead of the whole
  frame; the whole frame is inferred without gradient for LN, and for L0 where LN is matched
  to it. The backward pass, the expensive and memory-hungry part, then scales with the crops,
  not the frame. ``crop_area`` instead plans the crops per frame: as few crops of at most
  ``crop``² as cover that share of it (at least one, at most ``MAX_CROPS``), so that the steps
  cost the same share of an inference at every frame size (``TTAConfig.crop_plan``).
* ``tol``: early stop when the loss improves by less than this relative amount in a step.
* ``carry`` (video): keep the adapted weights from frame to frame; after a reset (the
  first frame or a scene cut) a frame gets ``steps`` steps, every other frame ``carry``.
  After each frame the weights are pulled back towards the original ones (keeping
  1 − carry/steps of their change), so the adaptation a frame sees settles at about ``steps``
  steps' worth instead of growing with the length of the shot.
  A scene cut is detected when the colour-histogram distance between consecutive frames exceeds
  ``scene_cut`` (see ``histogram_distance``). ``interval`` N: only every N-th carried frame
  takes its ``carry`` steps (and the pull back), the frames between run on the carried weights
  as they are (one inference each): N× less adaptation for a camera that cannot afford a step
  a frame.
* ``match_carried`` (video): whether a carried frame's LN is matched to its own L0. The first
  frame of a shot always is. With crops L0 costs a whole-frame pass, and on a carried frame the
  matching undoes only that frame's one step (the carried change is in L0 too), so the video
  mode skips it (``None``, the default: matched except in the video mode).
* ``amp_dtype``: autocast precision of the forward passes (e.g. torch.bfloat16 on CUDA); the
  weights and Adam stay in float32, since steps of 3e-6 vanish in 16-bit weights.

Speed options (the step's are opt-in; histogram matching is binned by default):

* ``compile=True``: each step (MD forward, MR forward, loss, backward) runs as one graph pair
  compiled by ``torch.compile`` (AOTAutograd + Inductor), and the Adam update as a second
  compiled graph; on CUDA with CUDA graphs (``mode="reduce-overhead"``) and channels-last
  weights and inputs, on the CPU with Inductor's C++ backend. Graphs are compiled once per input
  shape (``dynamic=False``) and reused for every later image or video frame of that shape; the
  optimizer state is reset in place between images so nothing recompiles. Results equal the
  eager step's within the dtype's tolerance (tested).
* ``fused=True``: MR's 5×5 ResBlocks run through the fused Triton kernel
  (``reblur_deploy.kernels.resblock``; CUDA only, else torch with a log line).
* ``histmatch``: ``"fast"`` (default) matches through the binned kernels (C++/CUDA), within
  0.5/255 of the exact matching by construction (planes whose proven bound exceeds that are
  matched exactly) and identical to it on 8-bit data; ``"exact"`` uses the exact reference
  (scikit-image's mapping to rounding, about 70× slower on a 720p frame on the CPU).

Batches: images are adapted independently by default (each from the original weights), so a
result never depends on what else is in the batch; ``joint=True`` adapts once on the whole
batch (N× cheaper, results then depend on the batch).

Safety: a non-finite loss or output stops adaptation; the last finite full-frame output (L0 at
worst) is returned with a warning, and the weights are reset. The weight file is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .device import autocast, frozen, memory_format
from .errors import ConfigError, InputError
from .histmatch import match_histograms
from .losses import blur_scale, self_supervised_loss
from .padding import pad_to_multiple

SCENE_CUT_BINS = 32
# The video mode (``TTAConfig.for_video``): one step per frame on random VIDEO_CROP² crops
# covering VIDEO_AREA of the frame. Measured on real 720p frames (docs/TTA.md): one crop kept
# 28 % of per-frame Algorithm A's NIQE gain, two 60 %, three 84 %, four 97 %, at 1.9, 3.0,
# 2.2-2.6 and 2.7-3.1x plain inference; three (21 % of a 720p frame) keep the gain with room
# under a 3x budget. A fixed count would cost 3.7x inference at 640x360 (three crops cover most
# of it) and cover 9 % of a 1080p frame; a fixed share keeps the cost ratio and the coverage.
VIDEO_CROP = 256
VIDEO_AREA = 0.21
MAX_CROPS = 8  # bounds the step's memory on 4K and larger frames


PAPER_LR = 3e-6  # Algorithm A's Adam rate, chosen for the paper's U-Net


def recommended_lr(metadata: dict) -> float:
    """The TTA rate a weight file's metadata records (``tta_lr``), else the paper's."""
    return metadata.get("tta_lr") or PAPER_LR


@dataclass(frozen=True)
class TTAConfig:
    """Every TTA option, by the name it has everywhere: ``reblur-run --tta-NAME`` (``--tta``
    for ``steps``), ``TTAConfig(NAME=...)``, ``Deblurrer(tta=TTAConfig(...))``. The defaults are
    the paper's Algorithm A; see the module docstring for each variant. Frozen: a changed
    setting is a new config (``dataclasses.replace``), and a per-call value (the crop of a frame
    too large to adapt whole) an argument of ``TestTimeAdapter.__call__``. ``lr`` unset: the
    rate the weight file recommends (``tta_lr`` in its metadata, measured for each bundled
    model: docs/MODEL_CARD.md), else the paper's ``PAPER_LR``."""

    steps: int = 5
    lr: float | None = None
    scale: int | None = None
    crop: int | None = None
    crops: int = 4
    crop_area: float | None = None
    tol: float | None = None
    carry: int | None = None
    scene_cut: float = 0.3
    interval: int = 1
    joint: bool = False
    amp_dtype: torch.dtype | None = None
    seed: int = 0
    compile: bool = False
    fused: bool = False
    histmatch: str = "fast"
    match_carried: bool | None = None

    def __post_init__(self):
        if self.histmatch not in ("exact", "fast"):
            raise ConfigError(f"TTA histmatch must be 'exact' or 'fast', got {self.histmatch!r}")
        if self.steps < 0 or (self.lr is not None and not self.lr > 0) or self.crops < 1 \
                or (self.scale is not None and self.scale < 1):  # fmt: skip
            raise ConfigError("TTA needs steps ≥ 0, lr > 0, crops ≥ 1 and scale ≥ 1")
        if self.crop is not None and self.crop < 1:
            raise ConfigError(f"TTA crop size must be ≥ 1, got {self.crop}")
        if self.crop_area is not None and not 0 < self.crop_area <= 1:
            raise ConfigError(f"TTA crop area must be in (0, 1], got {self.crop_area}")
        if self.carry is not None and self.carry < 0:
            raise ConfigError(f"TTA carry steps must be ≥ 0, got {self.carry}")
        if self.interval < 1:
            raise ConfigError(f"TTA interval must be ≥ 1, got {self.interval}")
        if self.tol is not None and self.tol < 0:
            raise ConfigError(f"TTA tolerance must be ≥ 0, got {self.tol}")

    def for_video(self) -> TTAConfig:
        """The video mode of this configuration: carry-over (1 step a frame unless ``carry``
        is set) and, unless ``crop`` is set, that step on random crops of at most
        ``VIDEO_CROP``² covering ``VIDEO_AREA`` of the frame (three at 720p, one at 640×360,
        seven at 1080p), with
        carried frames not matched to their own L0 unless ``match_carried`` is set. The first
        frame of each shot still gets ``steps`` steps (matched) and the carried weights stay
        within ``steps`` steps' worth of the original ones (``TestTimeAdapter._decay``). A
        carried frame then costs one whole-frame pass (LN) plus one small step: 1.2–2× plain
        inference at every size from 360p to 1080p, where per-frame Algorithm A costs
        ``steps`` whole-frame training steps (35× at 720p)."""
        crop, area = self.crop, self.crop_area
        if crop is None:
            crop, area = VIDEO_CROP, VIDEO_AREA if area is None else area
        carry = 1 if self.carry is None else self.carry
        match = False if self.match_carried is None else self.match_carried
        return dataclasses.replace(self, carry=carry, crop=crop, crop_area=area,
                                   match_carried=match)  # fmt: skip

    def scale_for(self, height: int, width: int) -> int:
        """The scale MR judges an H×W frame at: ``scale``, else ``losses.blur_scale``'s."""
        return self.scale or blur_scale(height, width)

    def crop_plan(self, height: int, width: int, crop: int) -> tuple[int, int]:
        """How many crops a step on an H×W frame adapts on, and their side: ``crops`` of
        ``crop``², or with ``crop_area`` as few crops of at most ``crop``² as cover that share
        of the frame (1 to ``MAX_CROPS``), each as large as the share asks: at 640×360 one of
        220², where a 256² one would cover 28 % (at that size each step's fixed costs weigh
        more, and the mode cost 2.4× plain inference)."""
        if self.crop_area is None:
            return self.crops, crop
        target = self.crop_area * height * width
        count = max(1, min(MAX_CROPS, math.ceil(target / crop**2)))
        return count, min(crop, round(math.sqrt(target / count)))


@dataclass(frozen=True)
class TTAStats:
    """What one call's adaptation did (one entry per adapted image, or one for a joint batch)."""

    steps: list[int] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)
    scene_cuts: int = 0
    fell_back: bool = False


@dataclass(frozen=True)
class TTAResult:
    """What ``TestTimeAdapter`` returns: the adapted images and what it took to make them."""

    image: torch.Tensor
    stats: TTAStats


@dataclass(frozen=True)
class _Steps:
    """What the step loop of one adaptation leaves: L0 (None when not made), the newest
    whole-frame output LN (None when the weights changed after it), the step losses, and why
    the loop stopped early (None: it did not fail)."""

    initial: torch.Tensor | None
    latest: torch.Tensor | None
    losses: list[float]
    failure: str | None = None


@dataclass(frozen=True)
class _Adapted:
    """One adaptation (an image, or a joint batch): its output and how it went."""

    image: torch.Tensor
    losses: list[float]
    fell_back: bool = False
    scene_cut: bool = False


def histogram_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Colour-histogram distance of two 3×H×W images in [0, 1]: half the L1 distance of their
    normalised 32-bin per-channel histograms, averaged over channels (0 = same, 1 = disjoint).

    Within one shot, consecutive frames stay below about 0.1; a cut to another scene usually
    exceeds 0.3, the default threshold.
    """
    ha = torch.stack([torch.histc(c.float(), SCENE_CUT_BINS, 0, 1) for c in a]) / a[0].numel()
    hb = torch.stack([torch.histc(c.float(), SCENE_CUT_BINS, 0, 1) for c in b]) / b[0].numel()
    return 0.5 * (ha - hb).abs().sum(1).mean().item()


class TestTimeAdapter:
    """Adapts MD to images with a frozen MR; keeps the original weights to restore them.

    Call it on N×3×H×W float tensors in [0, 1] (any H×W: padded to MD's size_divisor here); it
    returns a ``TTAResult``. Without ``carry`` every call starts from the original weights;
    with it, calls are consecutive video frames and ``reset()`` starts a new video.
    """

    __test__ = False  # not a pytest class, whatever its name

    def __init__(
        self,
        md: nn.Module,
        mr: nn.Module,
        config: TTAConfig | None = None,
        full_forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.md, self.mr = md, mr
        # The gradient-free whole-frame passes (L0 in crop mode, LN); the pipeline tiles them.
        self._full_forward = full_forward or self._forward
        config = config or TTAConfig()
        self.config = config if config.lr else dataclasses.replace(config, lr=PAPER_LR)
        # The steps run in the device's memory format (channels-last on CPUs: 2× a step there)
        self._format = memory_format(next(md.parameters()).device)
        md.to(memory_format=self._format)
        mr.to(memory_format=self._format)
        self._original = {k: v.detach().clone() for k, v in md.state_dict().items()}
        self._optimizer: torch.optim.Optimizer | None = None
        self._compiled: _CompiledStep | None = None
        self._previous_frame: torch.Tensor | None = None
        self._carried = 0  # carried frames since the last reset (for ``interval``)
        self._generator = torch.Generator().manual_seed(self.config.seed)

    def reset(self) -> None:
        """Restore MD's original weights (bit-exactly), forget the optimizer state, and start
        the crops' random sequence again: an input's result must not depend on which inputs
        came before it (the order differs between a local run and workers of a cluster)."""
        with torch.no_grad():
            for key, value in self.md.state_dict().items():
                value.copy_(self._original[key])
        self._optimizer = None
        self._previous_frame = None
        self._carried = 0
        self._generator.manual_seed(self.config.seed)

    def __call__(
        self, blurry: torch.Tensor, *, steps: int | None = None, crop: int | None = None
    ) -> TTAResult:
        """Adapt to ``blurry``. ``steps`` and ``crop`` replace the config's for this call only
        (a benchmark's step counts on one compiled adapter; the crop size the pipeline plans
        for a frame too large to adapt whole)."""
        steps = self.config.steps if steps is None else steps
        crop = self.config.crop if crop is None else crop
        padded, h, w = pad_to_multiple(blurry, getattr(self.md, "size_divisor", 1))
        if self.config.carry is not None:
            runs = [self._adapt_frame(frame[None], steps, crop) for frame in padded]
        elif self.config.joint:
            runs = [self._adapt(padded, steps, crop, restore=True)]
        else:
            runs = [self._adapt(x[None], steps, crop, restore=True) for x in padded]
        stats = TTAStats(
            steps=[len(run.losses) for run in runs],
            losses=[run.losses for run in runs],
            scene_cuts=sum(run.scene_cut for run in runs),
            fell_back=any(run.fell_back for run in runs),
        )
        return TTAResult(torch.cat([run.image for run in runs])[..., :h, :w], stats)

    def _adapt_frame(self, frame: torch.Tensor, steps: int, crop: int | None) -> _Adapted:
        """Carry-over: continue from the previous frame's weights unless the scene changed."""
        previous, self._previous_frame = self._previous_frame, frame
        cut = (
            previous is not None
            and histogram_distance(previous[0], frame[0]) > self.config.scene_cut
        )
        if previous is None or cut:
            self.reset()
            self._previous_frame = frame
            adapted = self._adapt(frame, steps, crop, restore=False)
        else:
            self._carried += 1
            if self._carried % self.config.interval:  # between adaptations: the carried weights
                adapted = self._adapt(frame, 0, crop, restore=False, match=False)
                return dataclasses.replace(adapted, scene_cut=False)
            match = self.config.match_carried is not False
            carry = self.config.carry or 0
            adapted = self._adapt(frame, carry, crop, restore=False, match=match)
        self._decay(steps)
        return dataclasses.replace(adapted, scene_cut=cut)

    def _decay(self, steps: int) -> None:
        """Pull the carried weights back towards the original ones, keeping 1 − carry/steps of
        their change. Each frame's ``carry`` steps move a weight by about ``lr`` each (Adam), so
        the change a frame sees settles at ``steps`` steps' worth (d = keep·d + carry·lr gives
        d = steps·lr): never more than per-frame Algorithm A, however long the shot."""
        carry = self.config.carry or 0
        keep = max(0.0, 1.0 - carry / steps) if steps else 0.0
        with torch.no_grad():
            for key, value in self.md.state_dict().items():
                if value.is_floating_point():
                    original = self._original[key]
                    value.sub_(original).mul_(keep).add_(original)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.config.amp_dtype):
            return self.md(x).float()

    def _random_crops(self, x: torch.Tensor, crop: int) -> torch.Tensor:
        """Random crops per image as ``TTAConfig.crop_plan`` plans them, at multiples of MD's
        size_divisor."""
        divisor = getattr(self.md, "size_divisor", 1)
        h, w = x.shape[-2:]
        count, crop = self.config.crop_plan(h, w, crop)
        ch = max(divisor, min(h, crop) // divisor * divisor)
        cw = max(divisor, min(w, crop) // divisor * divisor)
        crops = []
        for _ in range(count):
            top = int(torch.randint(0, h - ch + 1, (1,), generator=self._generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=self._generator))
            crops.append(x[..., top : top + ch, left : left + cw])
        return torch.cat(crops)

    def _adapt(
        self,
        blurry: torch.Tensor,
        steps: int,
        crop: int | None,
        restore: bool,
        match: bool = True,
    ) -> _Adapted:
        """Algorithm A (with the configured variants) on one image or a joint batch, on
        ``crop``² crops unless None; ``match=False``: LN as it is, without L0 or the matching."""
        step = self._choose_optimizer(blurry, steps, restore)
        with (
            frozen(self.mr),
            torch.inference_mode(False),
            torch.enable_grad(),
            self._mr_kernels(blurry),
        ):
            run = self._run_steps(blurry, steps, crop, step, match)
        return self._result(blurry, run, restore, match)

    def _choose_optimizer(
        self, blurry: torch.Tensor, steps: int, restore: bool
    ) -> _CompiledStep | None:
        """Adam for this adaptation: fresh unless carried over; the compiled step's own Adam
        (zeroed, never recreated, which would recompile) with ``compile``."""
        step = self._compiled_step() if self.config.compile and steps else None
        if step is not None:
            if restore or self._optimizer is None:
                step.reset_optimizer()
            self._optimizer = step.optimizer
        elif (
            restore
            or self._optimizer is None
            or self._optimizer is getattr(self._compiled, "optimizer", None)
        ):
            self._optimizer = torch.optim.Adam(self.md.parameters(), lr=self.config.lr)
        return step

    def _run_steps(
        self,
        blurry: torch.Tensor,
        steps: int,
        crop: int | None,
        step: _CompiledStep | None,
        match: bool,
    ) -> _Steps:
        """The step loop. Stops early at a non-finite loss or output, or when ``tol`` is
        reached. In crop mode L0 is a pass of its own, made only for ``match`` (or without
        steps)."""
        losses: list[float] = []
        scale = self.config.scale_for(*blurry.shape[-2:])  # the frame's, for its crops too
        initial = None  # L0
        if (crop is not None and match) or steps == 0:
            with torch.no_grad():
                initial = self._full_forward(blurry)
        latest = initial  # the newest full-frame output of the current weights
        for _ in range(steps):
            x = blurry if crop is None else self._random_crops(blurry, crop)
            x = x.contiguous(memory_format=self._format)
            if step is not None:
                output, loss = step.forward_loss(x, scale)
            else:
                output = self._forward(x)
                loss = self_supervised_loss(self.mr, output, scale=scale)
            if crop is None:
                latest = output.detach()
                initial = latest if initial is None else initial  # one tensor: not matched
            if not (torch.isfinite(loss) and torch.isfinite(output).all()):
                what = "loss" if torch.isfinite(output).all() else "output"
                return _Steps(initial, latest, losses, f"a non-finite {what}")
            losses.append(loss.item())
            if self.config.tol is not None and _converged(losses, self.config.tol):
                break  # in full-frame mode ``latest`` is already this step's output
            self._optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step is not None:
                step.update()
            else:
                self._optimizer.step()
            latest = None  # the weights changed
        if latest is None:
            with torch.no_grad():
                latest = self._full_forward(blurry)  # LN
            if not torch.isfinite(latest).all():
                return _Steps(initial, latest, losses, "a non-finite output after the last step")
        return _Steps(initial, latest, losses)

    def _result(self, blurry: torch.Tensor, run: _Steps, restore: bool, match: bool) -> _Adapted:
        """LN matched to L0's histograms (LN as it is without ``match``); after a failure,
        the last finite output (L0 at worst; the original weights' output when no L0 was
        made) with a warning and the weights reset."""
        initial, latest = run.initial, run.latest
        if run.failure is not None:
            latest = latest if latest is not None and torch.isfinite(latest).all() else initial
            if latest is None:
                self.reset()
                with torch.no_grad():
                    latest = initial = self._full_forward(blurry)
        if initial is not None and not torch.isfinite(initial).all():
            raise InputError("the network produced NaN or infinite values (diverged weights?)")
        if run.failure is not None:
            warnings.warn(
                f"TTA stopped after {len(run.losses)} step(s): {run.failure}; "
                "returning the last finite result and resetting the weights",
                RuntimeWarning,
                stacklevel=4,
            )
        if restore or run.failure is not None:
            self.reset()
        if not match or latest is initial:
            image = latest.clamp(0, 1)
        else:
            exact = self.config.histmatch == "exact"
            image = match_histograms(latest, initial, exact=exact).clamp_(0, 1)
        return _Adapted(image, run.losses, fell_back=run.failure is not None)

    def _compiled_step(self) -> _CompiledStep:
        if self._compiled is None:
            self._compiled = _CompiledStep(self.md, self.mr, self.config)
        return self._compiled

    def _mr_kernels(self, blurry: torch.Tensor):
        """MR's ResBlocks through the fused kernel when chosen (``kernels.resblock_impl``)."""
        from .kernels import resblock_impl

        dtype = self.config.amp_dtype or torch.float32
        if resblock_impl(blurry.device, dtype, requested=self.config.fused) != "triton":
            return contextlib.nullcontext()
        from .kernels.resblock import fused_resblocks

        return fused_resblocks(self.mr)


class _CompiledStep:
    """One TTA step under ``torch.compile``, compiled once per input shape and reused.

    ``forward_loss`` (MD forward under ``amp_dtype`` autocast, MR forward, the self-supervised
    loss; its backward pass comes from the same AOTAutograd graph pair) and ``update`` (Adam at
    ``lr``) are two compiled functions. On CUDA they run as CUDA graphs
    (``mode="reduce-overhead"``), with MD, MR and the inputs in channels-last memory format;
    outputs are cloned out of the graphs' memory pool before the next replay. Adam's state is
    created here, once, and zeroed in place for each new image, so the compiled update never
    sees a new optimizer (which would recompile).
    """

    def __init__(self, md: nn.Module, mr: nn.Module, config: TTAConfig):
        self.md, self.mr, self.amp_dtype = md, mr, config.amp_dtype
        self.device = next(self.md.parameters()).device
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.md.to(memory_format=torch.channels_last)
            self.mr.to(memory_format=torch.channels_last)
        params = [p for p in self.md.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, capturable=self.cuda)
        for p in params:  # the state Adam would create at its first step, created now
            self.optimizer.state[p] = {
                "step": torch.zeros((), device=p.device if self.cuda else "cpu"),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        mode = "reduce-overhead" if self.cuda else None
        self._forward_loss = torch.compile(self._loss, mode=mode, dynamic=False)
        self._update = torch.compile(self._step, mode=mode, dynamic=False)

    def reset_optimizer(self) -> None:
        with torch.no_grad():
            for state in self.optimizer.state.values():
                for value in state.values():
                    value.zero_()

    def _loss(self, x: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(x.device, self.amp_dtype):
            output = self.md(x).float()
        return output, self_supervised_loss(self.mr, output, scale=scale)

    def _step(self) -> None:
        self.optimizer.step()

    def forward_loss(self, x: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cuda:
            torch.compiler.cudagraph_mark_step_begin()
            x = x.contiguous(memory_format=torch.channels_last)
        output, loss = self._forward_loss(x, scale)
        if self.cuda:  # the next replay overwrites the graph's outputs
            output = output.clone()
        return output, loss

    def update(self) -> None:
        self._update()


def _converged(losses: list[float], tol: float) -> bool:
    """The last step improved the loss by less than ``tol`` (relative)."""
    return len(losses) > 1 and losses[-2] - losses[-1] < tol * losses[-2]


def adapt(
    blurry: torch.Tensor,
    md: nn.Module,
    mr: nn.Module,
    steps: int = 5,
    lr: float = PAPER_LR,
    **options,
) -> torch.Tensor:
    """Algorithm A on an N×3×H×W batch in [0, 1]; returns the adapted, histogram-matched images.

    MD's weights are restored afterwards. ``options`` are the other fields of ``TTAConfig``
    (``crop``, ``crops``, ``tol``, ``joint``, ``amp_dtype``, ``seed``, ...).
    """
    return TestTimeAdapter(md, mr, TTAConfig(steps=steps, lr=lr, **options))(blurry).image
