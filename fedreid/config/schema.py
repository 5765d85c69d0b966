"""Every configuration key, its type and its default — defined once, here.

The dataclasses are the single source of truth; ``fedreid config`` prints them as YAML and
OmegaConf checks the types of every override (``prune.target=0.6``). Open choices of the
FedKLPR paper are options with a documented default (see ``docs/choices.md``). The
``method`` section is built from the method registry: each method's options dataclass is
its ``method.<name>`` sub-section.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass

from fedreid.methods import METHODS

SYNTHETIC8_SITES = ["duke", "market", "cuhk03", "prid", "cuhk01", "viper", "3dpes", "ilids"]


@dataclass
class DataConfig:
    root: str = "data/synthetic-8"  # generated on first use when it is the synthetic default
    dataset: str = "fedreid"  # reader name (fedreid.data.readers.READERS)
    sites: list[str] = field(default_factory=lambda: list(SYNTHETIC8_SITES))  # the sites taking part
    height: int = 128  # input height in pixels (images are resized at load)
    width: int = 64  # input width in pixels
    synth_scale: float = 1.0  # synthetic-8 identity-count scale when it is generated
    synth_seed: int = 0  # synthetic-8 generator seed
    # Replicate small sites' training images up to this many per epoch (FedCAPR's IDE);
    # 0 disables replication.
    min_epoch_images: int = 0


@dataclass
class ModelConfig:
    arch: str = "auto"  # auto (the method's own) | a name in fedreid.models.BACKBONES
    weights: str = "none"  # none | imagenet | deepsort | /path/to/weights file or checkpoint
    last_stride: int = 1  # CNNs: 1 keeps the last stage at H/16 (re-ID default)
    parts: int = 0  # horizontal-stripe features appended to the global one (0 = global only)
    vit_depth: int = 0  # ViTs: transformer blocks (0 = the size's standard 12)
    init: str = ""  # federation's round-0 global model: a `fedreid pretrain` file ("" = random, from seed)


@dataclass
class TrainConfig:
    epochs: int = 1  # local epochs per round (or total epochs for `fedreid train`)
    batch_size: int = 32  # images per batch (P identities × K)
    num_instances: int = 4  # K of the P×K sampler
    optimizer: str = "adam"  # adam | sgd
    lr: float = 3.5e-4  # learning rate
    weight_decay: float = 5e-4  # L2 weight decay
    warmup_epochs: int = 0  # linear warm-up from 1% of lr (BoT), epochs
    lr_steps: list[int] = field(default_factory=list)  # epochs where lr is multiplied by 0.1
    max_batches: int = 0  # cap on batches per epoch (0 = a full pass)
    random_erasing: float = 0.5  # probability of erasing a random rectangle of an image
    amp: bool = True  # mixed precision, used only on CUDA


MethodConfig = make_dataclass(
    "MethodConfig",
    [("name", str, field(default="capr", metadata={"help": "the method of every site (fedreid.methods.METHODS)"})),
     *[(name, cls.Options, field(default_factory=cls.Options)) for name, cls in METHODS.items()]],
)
MethodConfig.__module__ = __name__
MethodConfig.__doc__ = "name: the method of every site (a name in fedreid.methods.METHODS); one options section per method."


@dataclass
class SiteOverride:
    """Per-site settings of a federation (``sites.<name>.method=scm``); empty = the run's."""

    method: str = ""


@dataclass
class RegConfig:
    """The regulariser that keeps local training near the downloaded global model."""

    enabled: bool = True  # train with the regulariser (from start_round)
    kind: str = "kl"  # kl (FedKLPR) | cosine (FedCAPR's 1 - cos)
    weight: float = 1.0  # λ of λ·regulariser
    tau: float = 0.1  # kl: softmax temperature over feature dimensions
    direction: str = "ref_to_local"  # kl: ref_to_local | local_to_ref | symmetric
    start_round: int = 2  # the first round's download is only an initialisation


@dataclass
class PruneConfig:
    enabled: bool = True  # prune the shared weights (FedKLPR)
    step: float = 0.2  # fraction of the remaining weights pruned per step
    target: float = 0.6  # overall sparsity of the prunable weights
    scope: str = "global"  # global (smallest weights of the whole model) | layer (per tensor)
    start_round: int = 1  # first round with a pruning step
    every: int = 1  # prune every N rounds


@dataclass
class AggregationConfig:
    weighting: str = "klpwa"  # klpwa | samples | uniform | cdw
    klaw_sign: str = "more_divergence_more_weight"  # more_divergence_more_weight | less_divergence_more_weight
    praw_form: str = "ratio"  # ratio | density
    combine: str = "convex"  # convex | product (product zeroes a site whose ratio is 0)
    beta: float = 0.5  # KLAW share in the convex mix
    sas: bool = True  # mask-aware averaging (SAS); False = plain weighted average
    share_buffers: bool = True  # False: BN running statistics stay on each site (FedPav)
    max_update_norm: float = 0.0  # reject a reply whose ‖θ_k − θ_global‖ exceeds this (0 = off)


@dataclass
class CRRConfig:
    enabled: bool = True  # cross-round recovery gates each site's pruning
    delta: float = 0.02  # allowed drop of the score (absolute, score in [0, 1])
    halt: str = "forever"  # forever | pause
    pause_rounds: int = 2  # halt=pause: rounds without pruning after a restore
    labels: str = "method"  # method (its crr_labels: identities or clusters) | identity (true ids)
    restore: str = "refill"  # refill (keep the download, refill what the step pruned) | backup


@dataclass
class DPConfig:
    """Central DP (fedreid.fl.dp): sites clip their update, the server adds Gaussian noise."""

    enabled: bool = False  # central differential privacy
    clipping_norm: float = 5.0  # C: bound on a site's update norm; sims.bench.privacy prints the median
    # z: noise std = z * C * (largest effective site weight). z >= 1 is meaningful privacy, and
    # with a handful of sites it costs most of the accuracy (README: Differential privacy).
    noise_multiplier: float = 1.0
    delta: float = 1e-5  # δ of the reported (ε, δ)
    accountant: str = "rdp"  # rdp | pld: dp_accounting's accountant for ε (fedreid.fl.privacy_ledger)


@dataclass
class CodecConfig:
    value_dtype: str = "float32"  # a name in fedreid.fl.codec.VALUE_DTYPES
    # absolute: a site sends its kept values | difference: the values minus its download, which
    # the coordinator adds to its float32 global (no update lost to half-precision rounding;
    # README: Benchmarks, for why it is not the default) | difference-int8: those differences
    # in one byte each (a float32 scale per 512), rounding carried to the next upload
    upload: str = "absolute"
    # values: each download is the global ⊙ the site's mask in value_dtype | difference-int8:
    # one byte a weight, the int8 step from the model the site already holds to the new global
    # (nothing when it holds it already; fedreid.fl.view)
    download: str = "values"
    # Round one (and the round-0 evaluation) without a model download: sites build the initial
    # model from the seed and check it against the coordinator's digest (a download otherwise).
    seeded_start: bool = True


@dataclass
class FLConfig:
    strategy: str = "fedklpr"  # fedklpr | fedcapr | fedpav | fedavg
    rounds: int = 5  # federated rounds
    fraction_train: float = 1.0  # share of the admitted sites sampled to train each round
    min_sites: int = 0  # 0 = every site of the federation must be connected to start a round
    round_timeout: float = 3600.0  # seconds a round waits for replies
    last_round_epochs: int = 0  # extra local epochs in the last round (FedCAPR uses 50)
    resume_dir: str = ""  # deployed runs: run folder of a crashed run to continue (server run --resume)
    # Seconds each round waits for the run's sites to connect and be admitted before it goes on
    # with those present (fewer than fl.min_sites only after this wait).
    node_wait: float = 120.0
    # Deployed runs: the run's identity. Sites keep their private state per run name, start a
    # new run fresh and reuse state only when the same run is resumed. `fedreid server run`
    # sets it (a resumed run keeps its own); empty = Flower's run id.
    run_name: str = ""
    # Deployed runs: "node_id=site" for every site key registered with the coordinator (`fedreid
    # server run` reads them from the SuperLink). A node takes part only as the site its key is
    # registered for; empty = trust the site name a node claims (SuperNode authentication off).
    bound_sites: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    every: int = 1  # evaluate every N rounds/epochs
    flip: bool = True  # add the flipped image's embedding (test-time augmentation)
    rerank: str = "none"  # none | k_reciprocal | kwf: also report re-ranked results (rerank_*)
    kwf_weighting: str = "inv_dist_pow"  # uniform | sim | inv_dist_pow | exp_decay (sims.bench.kwf_claim)
    kwf_top_m: int = 100  # KWF: candidates re-scored per query
    kwf_k: int = 6  # KWF: gallery neighbours fused per candidate
    protocols: list[str] = field(default_factory=list)  # empty = the method's own (fedreid.eval.protocols)
    batch_size: int = 128  # images per forward pass when extracting features


@dataclass
class SimConfig:
    num_cpus: int = 0  # Ray CPUs for the simulation (0 = all cores)
    num_gpus: float = 0.0  # Ray GPUs for the simulation (0 = those present when sites use them)
    client_cpus: float = 1.0  # CPUs (and torch threads) per simulated site
    client_gpus: float = 0.0  # a GPU share per simulated site when GPUs are present
    ray_address: str = ""  # "auto" or host:port attaches to an existing Ray cluster


@dataclass
class FedReIDConfig:
    seed: int = 0  # every random stream of the run (sites get their own streams from it)
    device: str = "auto"  # auto (a GPU when present) | cpu | cuda | cuda:N
    run_dir: str = "runs"  # where run folders are created
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    agg: AggregationConfig = field(default_factory=AggregationConfig)
    crr: CRRConfig = field(default_factory=CRRConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    sites: dict[str, SiteOverride] = field(default_factory=dict)  # per site: sites.<name>.method=scm

    def method_of(self, site: str) -> str:
        """The method site ``site`` runs: its ``sites.<site>.method``, else ``method.name``."""
        override = self.sites.get(site)
        return override.method if override and override.method else self.method.name

    def method_options(self, name: str):
        """The options of method ``name``: its ``method.<name>`` section, or the defaults of a
        method registered after the config schema was built."""
        options = getattr(self.method, name, None)
        return options if options is not None else METHODS[name].Options()
