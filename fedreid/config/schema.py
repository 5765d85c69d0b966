"""Every configuration key, its type and its default — defined once, here.

The dataclasses are the single source of truth; ``fedreid config`` prints them as YAML and
OmegaConf checks the types of every override (``prune.target=0.6``). Open choices of the
FedKLPR paper are options with a documented default (see ``docs/choices.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SYNTHETIC8_SITES = ["duke", "market", "cuhk03", "prid", "cuhk01", "viper", "3dpes", "ilids"]


@dataclass
class DataConfig:
    root: str = "data/synthetic-8"  # generated on first use when it is the synthetic default
    dataset: str = "fedreid"  # reader name (fedreid.data.readers.READERS)
    sites: list[str] = field(default_factory=lambda: list(SYNTHETIC8_SITES))
    height: int = 128
    width: int = 64
    synth_scale: float = 1.0
    synth_seed: int = 0
    # Replicate small sites' training images up to this many per epoch (FedCAPR's IDE);
    # 0 disables replication.
    min_epoch_images: int = 0


@dataclass
class ModelConfig:
    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 | mobilenet_v2
    weights: str = "none"  # none | imagenet | deepsort | /path/to/checkpoint.pth
    last_stride: int = 1


@dataclass
class TrainConfig:
    epochs: int = 1  # local epochs per round (or total epochs for `fedreid train`)
    batch_size: int = 32
    num_instances: int = 4  # K of the P×K sampler
    optimizer: str = "adam"  # adam | sgd
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 0  # linear warm-up from 1% of lr (BoT), epochs
    lr_steps: list[int] = field(default_factory=list)  # epochs where lr is multiplied by 0.1
    max_batches: int = 0  # cap on batches per epoch (0 = a full pass)
    random_erasing: float = 0.5
    amp: bool = True  # mixed precision, used only on CUDA


@dataclass
class BotConfig:
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3  # <= 0 means soft margin
    center_weight: float = 0.0005
    center_lr: float = 0.5


@dataclass
class CaprConfig:
    eps: float = 0.5  # DBSCAN radius on the Jaccard distance
    min_samples: int = 4
    k1: int = 20
    k2: int = 6
    temperature: float = 0.07
    intra_weight: float = 0.6
    inter_weight: float = 0.7
    momentum: float = 0.2  # memory keeps this fraction of its old value
    hard_negatives: int = 50
    camera_centre: bool = True  # cluster per-camera-centred features (learns from random weights)
    outlier_instances: bool = True  # outliers train as one-image proxies instead of being dropped
    adaptive_k: bool = True  # shrink k1/k2 on small sites (fedreid.pseudo_labels.site_neighbourhood)


@dataclass
class MethodConfig:
    name: str = "capr"  # a name in fedreid.methods.METHODS
    bot: BotConfig = field(default_factory=BotConfig)
    capr: CaprConfig = field(default_factory=CaprConfig)


@dataclass
class KLConfig:
    enabled: bool = True
    weight: float = 1.0  # λ of λ·KL
    tau: float = 0.1  # softmax temperature over feature dimensions
    direction: str = "ref_to_local"  # ref_to_local | local_to_ref | symmetric
    loss: str = "kl"  # kl | cosine (FedCAPR's 1 - cos regulariser, for the fedcapr baseline)
    start_round: int = 2  # the first round's download is only an initialisation


@dataclass
class PruneConfig:
    enabled: bool = True
    step: float = 0.2  # fraction of the remaining weights pruned per step
    target: float = 0.6  # overall sparsity of the prunable weights
    scope: str = "global"  # global | layer
    start_round: int = 1
    every: int = 1  # prune every N rounds


@dataclass
class AggregationConfig:
    weighting: str = "klpwa"  # klpwa | samples | uniform | cdw
    klaw_sign: str = "more_divergence_more_weight"
    praw_form: str = "ratio"  # ratio | density
    combine: str = "convex"  # convex | product (product zeroes a site whose ratio is 0)
    beta: float = 0.5  # KLAW share in the convex mix
    sas: bool = True  # mask-aware averaging (SAS); False = plain weighted average
    share_buffers: bool = True  # False: BN running statistics stay on each site (FedPav)
    max_update_norm: float = 0.0  # reject a reply whose ‖θ_k − θ_global‖ exceeds this (0 = off)


@dataclass
class CRRConfig:
    enabled: bool = True
    delta: float = 0.02  # allowed drop of the score (absolute, score in [0, 1])
    halt: str = "forever"  # forever | pause
    pause_rounds: int = 2
    metric: str = "auto"  # auto | map | proxy  (auto: map where the site has labels)
    restore: str = "refill"  # refill (keep the download, refill what the step pruned) | backup


@dataclass
class DPConfig:
    """Central DP (fedreid.fl.dp): sites clip their update, the server adds Gaussian noise."""

    enabled: bool = False
    clipping_norm: float = 5.0  # C: bound on a site's update norm; sims.bench.privacy prints the median
    # z: noise std = z * C * (largest effective site weight). z >= 1 is meaningful privacy, and
    # with a handful of sites it costs most of the accuracy (README: Differential privacy).
    noise_multiplier: float = 1.0
    delta: float = 1e-5  # δ of the reported (ε, δ)


@dataclass
class CodecConfig:
    value_dtype: str = "float32"  # float32 | float16


@dataclass
class FLConfig:
    strategy: str = "fedklpr"  # fedklpr | fedcapr | fedpav | fedavg
    rounds: int = 5
    fraction_train: float = 1.0
    min_sites: int = 0  # 0 = every site of the federation must be connected to start a round
    round_timeout: float = 3600.0  # seconds a round waits for replies
    last_round_epochs: int = 0  # extra local epochs in the last round (FedCAPR uses 50)
    resume_dir: str = ""  # deployed runs: run folder of a crashed run to continue (server run --resume)


@dataclass
class EvalConfig:
    every: int = 1  # evaluate every N rounds/epochs
    flip: bool = True
    rerank: bool = False  # also report k-reciprocal re-ranked results (rr_*)
    kwf: bool = False  # also report K-nearest weighted fusion re-ranked results (kwf_*)
    batch_size: int = 128


@dataclass
class SimConfig:
    num_cpus: int = 0  # 0 = all cores
    num_gpus: float = 0.0
    client_cpus: float = 1.0
    client_gpus: float = 0.0  # a GPU share per simulated site when GPUs are present
    ray_address: str = ""  # "auto" or host:port attaches to an existing Ray cluster


@dataclass
class FedReIDConfig:
    seed: int = 0
    device: str = "auto"
    run_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    agg: AggregationConfig = field(default_factory=AggregationConfig)
    crr: CRRConfig = field(default_factory=CRRConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sim: SimConfig = field(default_factory=SimConfig)
