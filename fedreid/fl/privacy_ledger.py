"""(ε, δ) of a run's central DP, from Google's maintained ``dp_accounting`` library.

Each round releases the noisy aggregate once: a Gaussian mechanism with noise multiplier
z relative to one site's sensitivity (:mod:`fedreid.fl.dp`), i.e. site-level privacy. When
a round samples ``m`` of the ``n`` connected sites, a site is only in the aggregate with
probability ``q = m / n`` and the release is amplified by subsampling; every round is
recorded with its own ``q`` and the rounds are composed.

Choices, stated:
- the sampled set is uniform without replacement of fixed size ``m``; it is accounted as
  Poisson sampling with rate ``q = m / n`` under add/remove-one-site neighbours, the
  standard approximation for DP-FedAvg (McMahan et al. 2018; TF Privacy and Opacus do the
  same). The amplification assumes the sample is not revealed; with ``q = 1`` (every site
  in every round, the default) no amplification is claimed and the figure is exact RDP
  composition of the Gaussian mechanism;
- accountant ``"rdp"`` (default: Rényi DP at the integer orders 2..64 and 128..1024, the
  library's improved RDP→(ε, δ) conversion; slightly loose, fast) or ``"pld"``
  (privacy-loss distributions: tight up to the discretisation, slower). Integer orders only:
  the library's fractional orders below 2 fail to converge for small z·q (it drops them with
  a warning each); they matter only where ε is far beyond any useful guarantee.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

ACCOUNTANTS = ("rdp", "pld")
RDP_ORDERS = (*range(2, 65), 128, 256, 512, 1024)


def _round_event(noise_multiplier: float, rate: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return gaussian if rate >= 1.0 else dp_accounting.PoissonSampledDpEvent(rate, gaussian)


def dp_epsilon(noise_multiplier: float, delta: float, rates: Sequence[float],
               accountant: str = "rdp") -> float:
    """ε at ``delta`` after one round per entry of ``rates`` (each round's sampling rate
    q in (0, 1]). ``inf`` when z = 0, 0 when no round ran."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant: {accountant!r} is not one of {ACCOUNTANTS}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    for q in rates:
        if not 0 < q <= 1:
            raise ValueError(f"sampling rate {q} must lie in (0, 1]: sampled / connected sites")
    if not rates:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    if accountant == "rdp":
        acc: dp_accounting.PrivacyAccountant = rdp_privacy_accountant.RdpAccountant(RDP_ORDERS)
    else:
        acc = pld_privacy_accountant.PLDAccountant()
    for rate, count in sorted(Counter(rates).items()):
        acc.compose(_round_event(noise_multiplier, rate), count)
    return float(acc.get_epsilon(delta))


class PrivacyLedger:
    """The rounds a run has released so far and the ε they add up to (checkpointable)."""

    def __init__(self, noise_multiplier: float, accountant: str = "rdp",
                 rates: Sequence[float] = ()) -> None:
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant: {accountant!r} is not one of {ACCOUNTANTS}")
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        self.noise_multiplier = noise_multiplier
        self.accountant = accountant
        self.rates: list[float] = []
        for q in rates:
            self._add(q)

    def _add(self, rate: float) -> None:
        if not 0 < rate <= 1:
            raise ValueError(f"sampling rate {rate} must lie in (0, 1]")
        self.rates.append(float(rate))

    def record_round(self, sampled: int, population: int) -> None:
        """One noisy release that sampled ``sampled`` of ``population`` connected sites."""
        if not 0 < sampled <= population:
            raise ValueError(
                f"sampled={sampled}, population={population}: need 0 < sampled <= population")
        self._add(sampled / population)

    def epsilon(self, delta: float) -> float:
        return dp_epsilon(self.noise_multiplier, delta, self.rates, self.accountant)

    def to_dict(self) -> dict[str, object]:
        return {"noise_multiplier": self.noise_multiplier, "accountant": self.accountant,
                "rates": list(self.rates)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PrivacyLedger:
        return cls(float(data["noise_multiplier"]), str(data["accountant"]),
                   [float(q) for q in data["rates"]])
