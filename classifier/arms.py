"""The arm syntax of `--arms` and recipes: `BASE(+FLAG)*([KEY=VALUE,...])?`, e.g. `synthetic+la+filter[w=0.5]`.

BASE is `real`, `reweight`, `oversample`, `synthetic` (RUN/synthetic), a `--compare` name (another synthetic
set) or `synthetic-features` (feature-level synthesis, classifier/feature_synthesis.py: no image set). FLAGs and
KEYs are settings of a synthetic arm (DESIGN.md, Downstream evaluation); they combine freely:

  [w=OMEGA]        loss weight of every synthetic sample, in (0, 1] (default 1)
  [share=S]        a fixed share S in (0, 1) of every batch is synthetic (default: none, one shuffled pool)
  +la [tau=T]      logit adjustment with the effective prior (real + omega x synthetic counts; default tau 1)
  +filter          keep synthetic images whose reference-classifier probability of their class lies in
    [low=L,high=H,copy=D]   [L, H] (default 0.2, 1.0) and whose RMS pixel distance to the nearest real
                     training image of their class is >= D (default 0.02, the audit's near-copy threshold)
  +crt [crt_frac=F]  two-stage: the last fraction F of the step budget (default 0.1) re-trains only the final
                     layer on the real training split with class-balanced sampling (cRT)

`synthetic-features` takes `+la`, `[w=OMEGA]`, `[tau=T]` (on its synthetic features and its head phase) and
  [head_frac=F]    the last fraction F of the step budget (default 0.1) re-trains only the final layer on the
                   real pooled features + generated features of the classes below the target

A spec is written back in one canonical form (flags in the order above, only non-default keys), which is the
arm's name in metrics.json, so `synthetic+crt+la[w=.5]` and `synthetic+la+crt[w=0.5]` name the same arm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from capaug.augment.errors import CapaugError

CLASSIC = ("reweight", "oversample")
FEATURES = "synthetic-features"
BUILTIN = ("real", *CLASSIC, "synthetic", FEATURES)
FLAGS = ("la", "filter", "crt")
FEATURE_FLAGS, FEATURE_KEYS = ("la",), ("w", "tau", "head_frac")  # what synthetic-features takes
KEYS = {  # key: (flag it needs or None, default, lowest, highest, lowest allowed?)
    "w": (None, 1.0, 0.0, 1.0, False),
    "share": (None, None, 0.0, 1.0, False),
    "tau": ("la", 1.0, 0.0, 10.0, False),
    "low": ("filter", 0.2, 0.0, 1.0, True),
    "high": ("filter", 1.0, 0.0, 1.0, True),
    "copy": ("filter", 0.02, 0.0, 1.0, True),
    "crt_frac": ("crt", 0.1, 0.0, 1.0, False),
    "head_frac": (None, 0.1, 0.0, 1.0, False),
}
_SPEC = re.compile(r"^(?P<base>[^+\[\],]+)(?P<flags>(\+[A-Za-z_]+)*)(\[(?P<keys>[^\]]*)\])?$")


@dataclass(frozen=True)
class ArmSpec:
    """One parsed arm: its base and synthetic settings (`values` holds every key, defaults included)."""

    base: str
    flags: tuple[str, ...] = ()
    values: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        keys = [f"{k}={_number(v)}" for k, v in self.values.items() if v != KEYS[k][1]]
        return self.base + "".join(f"+{f}" for f in self.flags) + (f"[{','.join(keys)}]" if keys else "")

    @property
    def synthetic(self) -> bool:
        """True for an arm on a synthetic image set (not `synthetic-features`, which makes its own features)."""
        return self.base not in ("real", *CLASSIC, FEATURES)

    @property
    def features(self) -> bool:
        return self.base == FEATURES

    def __getattr__(self, key: str):
        if key in KEYS:
            return self.values.get(key, KEYS[key][1])
        raise AttributeError(key)

    def settings(self) -> dict:
        """The arm's synthetic settings as recorded in metrics.json (null where a setting is off)."""
        if self.features:  # the image arms' keys (share, filter, crt: off) and its head phase
            return {"weight": self.w, "share": None, "logit_adjust": {"tau": self.tau} if "la" in self.flags else None,
                    "filter": None, "crt": None, "head": {"fraction": self.head_frac}}
        if not self.synthetic:
            return {}
        return {"weight": self.w, "share": self.share,
                "logit_adjust": {"tau": self.tau} if "la" in self.flags else None,
                "filter": {"low": self.low, "high": self.high, "copy": self.copy} if "filter" in self.flags else None,
                "crt": {"fraction": self.crt_frac} if "crt" in self.flags else None}


def parse_arm(text: str, synthetic_bases: tuple[str, ...] = ("synthetic",)) -> ArmSpec:
    """One arm spec -> `ArmSpec`; a `CapaugError` naming what is wrong otherwise."""
    text = text.strip()
    match = _SPEC.match(text.replace(" ", ""))
    if not match:
        raise CapaugError(f"cannot read arm {text!r}; write BASE+FLAG[key=value,...], e.g. synthetic+la[w=0.5]")
    base = match["base"]
    if base not in ("real", *CLASSIC, *synthetic_bases, FEATURES):
        raise CapaugError(f"unknown arm {base!r} in {text!r}; choose from "
                          f"{', '.join(('real', *CLASSIC, *synthetic_bases, FEATURES))}")
    flags = [f for f in match["flags"].split("+") if f]
    unknown = [f for f in flags if f not in FLAGS]
    if unknown:
        raise CapaugError(f"unknown setting +{unknown[0]} in arm {text!r}; settings: {', '.join('+' + f for f in FLAGS)}")
    values = {}
    for item in filter(None, (match["keys"] or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise CapaugError(f"unknown setting {item!r} in arm {text!r}; keys: {', '.join(KEYS)} (as key=value)")
        values[key] = _value(key, value, text)
    if (flags or values) and base in ("real", *CLASSIC):
        raise CapaugError(f"arm {text!r}: settings apply to synthetic arms only (synthetic or a --compare name)")
    if base == FEATURES and (set(flags) - set(FEATURE_FLAGS) or set(values) - set(FEATURE_KEYS)):
        raise CapaugError(f"arm {text!r}: {FEATURES} takes +la and {', '.join(k + '=' for k in FEATURE_KEYS)} only")
    if base != FEATURES and "head_frac" in values:
        raise CapaugError(f"arm {text!r}: head_frac= applies to {FEATURES} only (crt_frac= with +crt is the "
                          "image arms' head phase)")
    for key in values:
        need = KEYS[key][0]
        if need and need not in flags:
            raise CapaugError(f"arm {text!r}: {key}= needs +{need}")
    if "filter" in flags and values.get("low", KEYS["low"][1]) > values.get("high", KEYS["high"][1]):
        raise CapaugError(f"arm {text!r}: the filter band needs low <= high")
    usable = FEATURE_KEYS if base == FEATURES else [k for k in KEYS if k not in ("head_frac",)]
    return ArmSpec(base, tuple(f for f in FLAGS if f in flags),
                   {k: values.get(k, KEYS[k][1]) for k in KEYS
                    if k in usable and (KEYS[k][0] is None or KEYS[k][0] in flags)})


def split_specs(text: str) -> list[str]:
    """A comma list of specs, keeping the commas inside `[...]`."""
    specs, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            specs.append(current)
            current = ""
        else:
            current += char
    return [s.strip() for s in [*specs, current] if s.strip()]


def parse_arms(specs: list[str] | str, synthetic_bases: tuple[str, ...] = ("synthetic",)) -> list[ArmSpec]:
    """Specs (a list, or one comma string) -> unique `ArmSpec`s in order (duplicates by canonical name dropped)."""
    texts = split_specs(specs) if isinstance(specs, str) else [t for s in specs for t in split_specs(s)]
    parsed = {}
    for text in texts:
        spec = parse_arm(text, synthetic_bases)
        parsed.setdefault(spec.name, spec)
    return list(parsed.values())


def _value(key: str, text: str, spec: str) -> float:
    _, _, low, high, closed = KEYS[key]
    try:
        value = float(text)
    except ValueError:
        raise CapaugError(f"arm {spec!r}: {key}={text!r} is not a number") from None
    if not (low <= value <= high) or (value == low and not closed) or (key == "share" and value == high):
        interval = f"{'[' if closed else '('}{_number(low)}, {_number(high)}{')' if key == 'share' else ']'}"
        raise CapaugError(f"arm {spec!r}: {key}={text} is outside {interval}")
    return value


def _number(value: float) -> str:
    return f"{value:g}"

