"""What defines an ``ase-mlff learn`` run (:class:`LearnSettings`) and the loop's constants."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from ...errors import InputError

#: checkpoint format of this module (refused when it differs)
CHECKPOINT_VERSION = 2
CHECKPOINT_NAME = "checkpoint.ckpt"
#: families with their own uncertainty; the others need a committee
OWN_VARIANCE = ("gap",)
#: Berendsen barostat: assumed bulk modulus (GPa) and time constant (fs); only the speed of the
#: volume's response depends on them, not the pressure it relaxes to
BAROSTAT_MODULUS_GPA = 100.0
BAROSTAT_TAU_FS = 500.0
#: a walker whose temperature exceeds this multiple of its target (plus 500 K) has run away
RUNAWAY_FACTOR = 5.0


@dataclass
class LearnSettings:
    """What defines a run (a resumed run must have the same, ``max_calls`` and ``patience``
    excepted). Units: K, GPa, fs, 1/fs, eV/Å."""

    reference: str
    family: str = "gap"
    committee: int | None = None
    temperatures: tuple = (300.0,)
    pressure: float | None = None
    max_calls: int = 100
    threshold: float | None = None
    threshold_factor: float = 3.0
    segment_steps: int = 100
    check_interval: int = 2
    patience: int | None = None
    timestep: float | None = None
    friction: float = 0.02
    seed: int = 0
    variance: str = "exact"
    fallback: bool = True
    walkers: str = "ramp"
    reselect_growth: float = 1.5
    novelty: float = 0.9
    #: GAP: the leave-one-frame-out calibration is redone when the labelled environments have
    #: grown by this factor since the last one (and at every choice of the sparse set); the refits
    #: between reuse its factors and held-out force RMS (1: at every fit)
    recalibrate_growth: float = 1.2
    options: dict = field(default_factory=dict)

    #: may differ between a run and its resumption
    MUTABLE = ("max_calls", "patience")

    def check(self) -> None:
        if self.family not in trainable_families():
            raise InputError(f"unknown family {self.family!r} (known: {', '.join(trainable_families())})")
        if self.committee is None and self.family not in OWN_VARIANCE:
            raise InputError(f"a {self.family} model gives no uncertainty of its own: learn with a committee "
                             f"(--committee K, K >= 2), or use --family gap")
        if self.committee is not None:
            from ...training.committee import committee_families

            families = committee_families()
            if self.family not in families:
                raise InputError(f"committees can be trained for {', '.join(families)}, not {self.family!r}"
                                 + ("; gap has its own predictive variance: leave out --committee"
                                    if self.family == "gap" else ""))
            if self.committee < 2:
                raise InputError(f"a committee needs K >= 2 members, got {self.committee}")
        if not self.temperatures or any(not (math.isfinite(t) and t > 0) for t in self.temperatures):
            raise InputError(f"temperatures must be positive (K), got {list(self.temperatures)}")
        for name, low in (("max_calls", 1), ("segment_steps", 1), ("check_interval", 1)):
            if int(getattr(self, name)) < low:
                raise InputError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"patience must be at least 1 MD step, got {self.patience}")
        for name in ("threshold", "threshold_factor", "timestep"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise InputError(f"{name} must be a positive number, got {v}")
        if not (math.isfinite(self.friction) and self.friction >= 0):
            raise InputError(f"friction must be >= 0 (1/fs), got {self.friction}")
        if self.pressure is not None and not math.isfinite(self.pressure):
            raise InputError(f"pressure must be a number (GPa), got {self.pressure}")
        if self.walkers not in ("each", "ramp"):
            raise InputError(f"walkers must be 'each' or 'ramp', got {self.walkers!r}")
        if self.variance not in ("exact", "samples"):
            raise InputError(f"variance must be 'exact' or 'samples', got {self.variance!r}")
        if not self.reselect_growth > 1.0 or not 0.0 < self.novelty <= 1.0:
            raise InputError("reselect_growth must be > 1 and novelty from 0 to 1")
        if not (math.isfinite(self.recalibrate_growth) and self.recalibrate_growth >= 1.0):
            raise InputError(f"recalibrate_growth must be a number >= 1 (1: calibrate at every fit), got "
                             f"{self.recalibrate_growth}")

    def identity(self) -> dict:
        d = asdict(self)
        for k in self.MUTABLE:
            d.pop(k)
        d["temperatures"] = [float(t) for t in self.temperatures]
        return json.loads(json.dumps(d, sort_keys=True, default=str))

    def steps_patience(self, n_walkers: int) -> int:
        """MD steps without a crossing that end the run: ``patience``, else ten turns and at least
        two turns of every walker."""
        if self.patience is not None:
            return int(self.patience)
        return max(10, 2 * n_walkers) * int(self.segment_steps)


def trainable_families() -> list[str]:
    from ...training import families

    return families()
