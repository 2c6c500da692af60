"""The training configuration: one dataclass, read from defaults < a config file < the command line.

Every field is a command-line option (``--batch-size``) and a config-file key (``batch_size``
or ``batch-size``); the file is JSON, or TOML (``tomllib``) when its name ends in ``.toml``::

    # gopro.toml
    data = ["gopro:/data/GOPRO_Large"]
    val = ["gopro:/data/GOPRO_Large"]
    md = "unet"
    iters = 400000
    amp = "bf16"

When resuming, the configuration saved in the checkpoint takes the place of the defaults, so
``--resume`` alone continues a run exactly as it was started.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from reblur_deploy.errors import ConfigError


def _m(help: str, group: str, **extra) -> dict[str, Any]:
    """Field metadata: its --help text and option group (how a value is parsed comes from the
    field's type, see ``KINDS``)."""
    return {"help": help, "group": group, **extra}


# A field's type → how a value from the command line or a config file is parsed.
KINDS = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "str": "str",
    "int | None": "opt_int",
    "float | None": "opt_float",
    "str | None": "opt_str",
    "list[str]": "list",
    "list[int]": "ints",
    "dict": "json",
}


def _kind(f) -> str:
    return KINDS[f.type if isinstance(f.type, str) else f.type.__name__]


DATA = "data"
MODEL = "models and losses"
OPTIM = "optimisation"
CHECK = "checkpoints, validation and logging"
ABLATE = "ablations (paper Tables 4 and E)"
RUN = "devices"


@dataclass
class TrainConfig:
    # ---------------------------------------------------------------------------- data
    data: list[str] = field(
        default_factory=list,
        metadata=_m(
            "Training data KIND:PATH[@SHARE], repeatable: gopro:, reds:, paired:, synthetic:DIR, "
            "synthetic:skimage or frames:DIR (see below).",
            DATA,
            metavar="KIND:PATH",
        ),
    )
    val: list[str] = field(
        default_factory=list,
        metadata=_m(
            "Validation data, repeatable: KIND:PATH (its held-out split), names:A,B,... (held "
            "out of --data by name), or a fraction such as 0.1.",
            DATA,
            metavar="SPEC",
        ),
    )
    gopro_blur: str = field(
        default="blur",
        metadata=_m("GOPRO blurry folder.", DATA, choices=("blur", "blur_gamma")),
    )
    crop: int = field(
        default=256,
        metadata=_m("Training crop size (a multiple of the MD's size_divisor).", DATA),
    )
    batch_size: int = field(
        default=16,
        metadata=_m("Global batch size (split evenly over the processes).", DATA),
    )
    flip: bool = field(default=True, metadata=_m("Random horizontal flips.", DATA))
    rotate: bool = field(default=True, metadata=_m("Random 90° rotations.", DATA))
    channel_shuffle: bool = field(
        default=False, metadata=_m("Random RGB channel permutations.", DATA)
    )
    syn_frames: list[int] = field(
        default_factory=lambda: [7, 15],
        metadata=_m("Synthetic blur: sub-frames per image, MIN,MAX.", DATA, metavar="A,B"),
    )
    syn_shift: float = field(
        default=16.0,
        metadata=_m("Synthetic blur: largest translation over the exposure, px.", DATA),
    )
    syn_rotation: float = field(
        default=1.0, metadata=_m("Synthetic blur: largest rotation, degrees.", DATA)
    )
    syn_zoom: float = field(
        default=0.0,
        metadata=_m("Synthetic blur: largest zoom (0.02 = 2 %%); 0 = off.", DATA),
    )
    syn_noise: float = field(
        default=0.0,
        metadata=_m("Synthetic blur: largest Gaussian noise σ in [0, 1] units; 0 = off.", DATA),
    )
    syn_soften: float = field(
        default=0.0,
        metadata=_m(
            "Synthetic blur: largest Gaussian σ (px) of lens softness, applied to the sharp image "
            "too; 0 = off.",
            DATA,
        ),
    )
    sharp_share: float = field(
        default=0.0,
        metadata=_m(
            "Share of samples whose input is their sharp image (nothing to deblur: MD learns to "
            "leave it alone); 0 = off.",
            DATA,
        ),
    )
    keep_mean: bool = field(
        default=False,
        metadata=_m(
            "Shift each sample's blurry crop to its sharp crop's mean, per channel: MD learns to "
            "keep its input's brightness (blur averaged in linear light is brighter than the "
            "sharp frame: REDS and synthetic pairs by 3 levels on average).",
            DATA,
        ),
    )
    cache: str = field(
        default="auto",
        metadata=_m(
            "Keep decoded images in memory: on, off, or auto (on when they fit in --cache-mb).",
            DATA,
            choices=("auto", "on", "off"),
        ),
    )
    cache_mb: int = field(default=4096, metadata=_m("Memory limit of --cache auto.", DATA))
    check_data: str = field(
        default="full",
        metadata=_m(
            "Before training, decode every image (full) or read headers only (header: a corrupt "
            "image then stops training when it is reached).",
            DATA,
            choices=("full", "header"),
        ),
    )
    workers: int | None = field(
        default=None,
        metadata=_m(
            "Data loader processes per training process [default: 0 on a CPU, else "
            "min(8, cores per process)].",
            DATA,
        ),
    )
    # -------------------------------------------------------------------------- models
    mode: str = field(
        default="joint",
        metadata=_m(
            "joint: MD on L1 + λ·L_Reblur, then MR on L_Blur + L_Sharp, each iteration; "
            "baseline: MD on L1 only (no MR); mr: MR alone (MD frozen, from --init) on "
            "blur made longer, |MR(T_α(S)) − T(S)|, from the sharp images of --data (a frames: "
            "source's from its real consecutive frames).",
            MODEL,
            choices=("joint", "baseline", "mr"),
        ),
    )
    md: str = field(
        default="unet",
        metadata=_m("Deblurring module.", MODEL, choices=("unet", "srn", "dhn")),
    )
    md_config: dict = field(
        default_factory=dict,
        metadata=_m(
            'MD constructor arguments as JSON, e.g. \'{"widths":[16,24,32],"n_blocks":2}\' '
            "[default: {}, the paper's].",
            MODEL,
            metavar="JSON",
        ),
    )
    mr_blocks: int = field(
        default=2,
        metadata=_m("ResBlocks of the reblurring module MR (paper: 1 to 4).", MODEL),
    )
    mr_width: int = field(default=64, metadata=_m("Channels of MR (paper: 64).", MODEL))
    lam: float = field(
        default=1.0,
        metadata=_m("λ, the weight of L_Reblur in MD's loss.", MODEL, flag="lambda"),
    )
    # ---------------------------------------------------------------------- optimisation
    iters: int | None = field(default=None, metadata=_m("Run length in iterations.", OPTIM))
    epochs: float | None = field(
        default=None, metadata=_m("Run length in epochs (instead of --iters).", OPTIM)
    )
    minutes: float | None = field(
        default=None,
        metadata=_m(
            "Run length in minutes of training (instead of --iters): the rate of the first "
            "20 iterations fixes the number of iterations, and with it the learning-rate "
            "schedule; validation and checkpoints come on top.",
            OPTIM,
        ),
    )
    stop_after: float | None = field(
        default=None,
        metadata=_m(
            "Stop this invocation after about this many minutes of wall time, with a "
            "checkpoint; the run's length and schedule stay those of --iters, so --resume "
            "continues it (a campaign across sessions).",
            OPTIM,
            metavar="MINUTES",
        ),
    )
    stop_at: int | None = field(
        default=None,
        metadata=_m(
            "Stop this invocation at this iteration, with a checkpoint (as --stop-after).",
            OPTIM,
            metavar="ITERATION",
        ),
    )
    lr: float = field(
        default=1e-4,
        metadata=_m(
            "Adam learning rate (betas 0.9, 0.999), halved at 50 %%, 75 %% and 90 %% of the run.",
            OPTIM,
        ),
    )
    amp: str = field(
        default="off",
        metadata=_m(
            "Mixed precision (torch.autocast): bf16, or fp16 with a GradScaler.",
            OPTIM,
            choices=("off", "bf16", "fp16"),
        ),
    )
    channels_last: bool = field(
        default=False,
        metadata=_m("Networks and batches in channels-last memory layout.", OPTIM),
    )
    compile: bool = field(
        default=False,
        metadata=_m(
            "torch.compile the networks' training forward passes (worth it on a GPU; the first "
            "iterations then take minutes).",
            OPTIM,
        ),
    )
    seed: int = field(
        default=0, metadata=_m("Seed of the initial weights and of the data stream.", OPTIM)
    )
    # ---------------------------------------------------------------------- ablations
    perceptual: float = field(
        default=0.0,
        metadata=_m("Weight of a VGG-19 perceptual loss on MD (0 = off).", ABLATE),
    )
    perceptual_layer: str = field(
        default="relu5_4",
        metadata=_m("VGG-19 layer of the perceptual loss (relu1_1 ... relu5_4).", ABLATE),
    )
    vgg_weights: str | None = field(
        default=None,
        metadata=_m(
            "VGG-19 weights: torchvision's vgg19-dcbb9e9d.pth (read with weights_only=True) or a "
            "safetensors file of the same keys; never downloaded.",
            ABLATE,
            metavar="FILE",
        ),
    )
    adversarial: float = field(
        default=0.0,
        metadata=_m(
            "Weight of an adversarial loss with a PatchGAN discriminator (0 = off).",
            ABLATE,
        ),
    )
    # ------------------------------------------------------------ checkpoints, logging
    out: str = field(
        default="runs/train",
        metadata=_m(
            "Run folder: checkpoints, metrics.jsonl, last/best weights.",
            CHECK,
            metavar="DIR",
        ),
    )
    init: str | None = field(
        default=None,
        metadata=_m(
            "Fine-tune: start MD (and MR, when the file has one of the same shape) from this "
            "weight file or bundled name; optimizers and schedule start fresh.",
            CHECK,
            metavar="WEIGHTS",
        ),
    )
    resume: str | None = field(
        default=None,
        metadata=_m(
            "Resume from this checkpoint, or (no value) from the newest checkpoint in --out.",
            CHECK,
            nargs="?",
            const="auto",
            metavar="CHECKPOINT",
        ),
    )
    checkpoint_every: int = field(
        default=1000,
        metadata=_m("Iterations between checkpoints (and one at the end).", CHECK),
    )
    keep_checkpoints: int = field(
        default=2, metadata=_m("Checkpoints kept; older ones are deleted.", CHECK)
    )
    val_every: int = field(
        default=1000,
        metadata=_m("Iterations between validations (and one at the end).", CHECK),
    )
    val_crop: int | None = field(
        default=None,
        metadata=_m("Validate on the centre crop of this size [default: whole images].", CHECK),
    )
    log_every: int = field(
        default=10, metadata=_m("Iterations between metrics.jsonl lines.", CHECK)
    )
    progress: bool = field(default=True, metadata=_m("Progress bar (rate, ETA, losses).", CHECK))
    tensorboard: str = field(
        default="auto",
        metadata=_m(
            "TensorBoard logs in --out/tensorboard (auto: when tensorboard is installed).",
            CHECK,
            choices=("auto", "on", "off"),
        ),
    )
    # --------------------------------------------------------------------------- devices
    device: str = field(
        default="auto",
        metadata=_m(
            "auto, cpu, cuda, cuda:1; under torchrun each process takes cuda:LOCAL_RANK.",
            RUN,
        ),
    )

    # keys that do not change what is computed (free to change when resuming)
    HARMLESS = frozenset(
        ["out", "resume", "checkpoint_every", "keep_checkpoints", "val_every", "log_every",
         "progress", "tensorboard", "workers", "device", "check_data", "cache", "cache_mb",
         "channels_last", "compile", "stop_after", "stop_at"]
    )  # fmt: skip

    # ------------------------------------------------------------------------------- I/O

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with the config-file key names."""
        return {_key(f): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> TrainConfig:
        by_key = {}
        for f in fields(cls):
            by_key[_key(f)] = f
            by_key[f.name] = f
        parsed = {}
        for key, value in values.items():
            f = by_key.get(str(key).replace("-", "_"))
            if f is None:
                raise ConfigError(f"{origin}: unknown option {key!r}")
            parsed[f.name] = _coerce(f, value, origin)
        config = cls(**parsed)
        config.validate()
        return config

    def validate(self) -> None:
        from reblur_deploy.models import MODELS

        divisor = MODELS[self.md].size_divisor
        if self.crop < divisor or self.crop % divisor:
            raise ConfigError(
                f"--crop {self.crop} must be a positive multiple of {divisor} for --md {self.md}"
            )
        try:
            inspect.signature(MODELS[self.md]).bind(**self.md_config)
        except TypeError as e:
            raise ConfigError(f"--md-config does not fit --md {self.md}: {e}") from None
        if self.val_crop is not None and self.val_crop < 8:
            raise ConfigError("--val-crop must be at least 8")
        lengths = [x for x in (self.iters, self.epochs, self.minutes) if x is not None]
        if len(lengths) != 1:
            raise ConfigError("give the run length as exactly one of --iters, --epochs, --minutes")
        if lengths[0] <= 0:
            raise ConfigError("--iters / --epochs / --minutes must be positive")
        positive = ("batch_size", "checkpoint_every", "keep_checkpoints", "val_every",
                    "log_every", "cache_mb")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1")
        if not 1 <= self.mr_blocks <= 8 or self.mr_width < 1:
            raise ConfigError("--mr-blocks must be in 1..8 (paper: 1 to 4) and --mr-width ≥ 1")
        if self.lr <= 0 or self.lam < 0 or self.perceptual < 0 or self.adversarial < 0:
            raise ConfigError("--lr must be positive; --lambda and loss weights ≥ 0")
        if self.workers is not None and self.workers < 0:
            raise ConfigError("--workers must be ≥ 0")
        if (self.stop_after is not None and self.stop_after <= 0) or (
            self.stop_at is not None and self.stop_at <= 0
        ):
            raise ConfigError("--stop-after and --stop-at must be positive")
        if len(self.syn_frames) != 2:
            raise ConfigError("--syn-frames takes MIN,MAX")
        if self.perceptual > 0 and not self.vgg_weights:
            raise ConfigError(
                "--perceptual needs --vgg-weights FILE (torchvision's vgg19-dcbb9e9d.pth); "
                "weights are never downloaded"
            )
        if self.mode != "joint" and self.lam != 1.0:
            raise ConfigError("--lambda applies to --mode joint only")
        if self.mode == "mr" and (self.perceptual > 0 or self.adversarial > 0):
            raise ConfigError("--mode mr trains MR alone: --perceptual and --adversarial train MD")


def _key(f) -> str:
    return f.metadata.get("flag", f.name)


def _flag(f) -> str:
    return "--" + _key(f).replace("_", "-")


def _coerce(f, value: Any, origin: str) -> Any:
    kind, name = _kind(f), _key(f)
    try:
        if kind.startswith("opt_"):
            if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
                return None
            kind = kind[4:]
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out: Any = int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):  # nan would train for hours and save NaN weights
                raise ValueError
        elif kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool | int):
                raise ValueError
            out = bool(value)
        elif kind == "str":
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            out = str(value)
        elif kind == "list":
            out = [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
        elif kind == "ints":
            if isinstance(value, str):
                value = value.replace("-", ",").split(",")
            out = [int(v) for v in value]
        elif kind == "json":
            out = json.loads(value) if isinstance(value, str) else value
            if not isinstance(out, dict):
                raise ValueError
        else:  # pragma: no cover
            raise AssertionError(kind)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: {name} = {value!r} is not a valid {kind}") from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"{origin}: {name} must be one of {', '.join(choices)}, got {out!r}")
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """A config file as a dict: TOML for *.toml, else JSON."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        values = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}"
        ) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file holds one table/object of options")
    return values


# -------------------------------------------------------------------------------- CLI

EPILOG = """\
data sources (--data, repeatable; mixed by @SHARE, e.g. synthetic:skimage@0.5):
  gopro:ROOT        GOPRO_Large: ROOT/train/<seq>/{blur,blur_gamma,sharp}/*.png
  reds:ROOT         REDS: ROOT/train/train_{blur,sharp}/<seq>/*.png or ROOT/train_{blur,sharp}
  paired:ROOT       ROOT/blur + ROOT/sharp (or ROOT/<seq>/{blur,sharp}), paired by name:
                    the same name, else 'blur' -> 'sharp' (blur_00.png <-> sharp_00.png)
  synthetic:DIR     sharp images under DIR, blurred along random camera trajectories
  synthetic:skimage the photos that ship with scikit-image
  frames:DIR        consecutive frames of a 240-fps video (DIR's, or each subfolder's): every
                    frame's blur is the linear-light mean of k real frames around it (GOPRO's
                    recipe; k odd, in --syn-frames)
validation (--val, repeatable): gopro:ROOT (its test split), reds:ROOT (val split),
  paired:ROOT, synthetic:DIR, names:blur_04,461 (held out of --data by name), 0.1 (a fraction)

examples:
  python -m train.main --data paired:../shared/data/gopro --md unet --mr-blocks 2 \\
      --iters 50 --crop 96
  python -m train.main --config gopro.toml --amp bf16
  torchrun --nproc-per-node 8 -m train.main --config gopro.toml
  python -m train.main --resume --out runs/gopro          # continue the newest checkpoint

The result is --out/last.safetensors (and best.safetensors with --val): reblur-run --weights.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.main",  # train.main in a checkout
        description="Train the deblurring module MD and the reblurring module MR of Nah et al., "
        '"Clean Images are Hard to Reblur" (ICLR 2022). Options override --config, which '
        "overrides the defaults shown.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", help="JSON or TOML file of options.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Tracebacks on errors.")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        default = f.default if f.default is not MISSING else f.default_factory()
        shown = json.dumps(default) if isinstance(default, list | dict) else default
        help_text = (
            meta["help"] if "[default" in meta["help"] else f"{meta['help']} [default: {shown}]"
        )
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text}
        kind = _kind(f)
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == "list":
            kwargs["action"] = "append"
        if "metavar" not in meta and "choices" not in meta and kind not in ("bool", "list"):
            kwargs["metavar"] = {"int": "N", "float": "X", "opt_int": "N", "opt_float": "X"}.get(
                kind, "VALUE"
            )
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        for extra in ("metavar", "nargs", "const"):
            if extra in meta:
                kwargs[extra] = meta[extra]
        group.add_argument(_flag(f), **kwargs)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[dict[str, Any], str | None, bool]:
    """Command line → (options given, config file, verbose)."""
    values = vars(build_parser().parse_args(argv))
    return values, values.pop("config", None), bool(values.pop("verbose", False))


def resolve(
    cli: dict[str, Any], file: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> TrainConfig:
    """defaults (or ``base``, a saved config) < ``file`` < ``cli``."""
    known = {_key(f) for f in fields(TrainConfig)} | {f.name for f in fields(TrainConfig)}
    merged: dict[str, Any] = {}
    for origin, layer in (
        ("checkpoint", base or {}),
        ("config file", file or {}),
        ("command line", cli),
    ):
        for key, value in layer.items():
            key = str(key).replace("-", "_")
            if key not in known:
                raise ConfigError(f"{origin}: unknown option {key!r}")
            merged[key] = value
    return TrainConfig.from_dict(merged, "options")
