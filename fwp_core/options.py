"""The cores' names and options, without torch: the run's config (configs/) and the command line
import them to check a run's values before anything heavy loads; cores.py builds the cores from
them. CoreConfig is the `core` section of the config, validated as the other sections are (pydantic:
types, `Literal` choices, `Field` ranges)."""
from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

# Core name -> fast-weight rule (None: the LSTM baseline).
CORES = {
    "lstm": None,
    "linear_transformer": "sum_rule",
    "delta_net": "delta_rule",
    "delta_rnn": "delta_rnn",
    "rdn": "rdn",
    "delta_lstm": "delta_lstm",
}
# "paper": each rule's map in the paper's code: elu_p1 for sum_rule and delta_rule (RL code) and for
# delta_lstm's feed-forward q, k (its LM code); softmax for rdn and delta_rnn, whose maps see the
# recurrence. softmax and elu_p1 are selectable where the map sits outside the recurrence.
FEATURE_MAPS = ("paper", "softmax", "elu_p1")
RDN_INITS = ("small", "paper")


@dataclass(config=ConfigDict(strict=True, extra="forbid", validate_assignment=True))
class CoreConfig:
    """Sizes and options of the cores; defaults are the paper's RL block and its LSTM baseline."""
    d_model: int = Field(128, ge=1, description="RFWP: width of the residual stream")
    num_layers: int = Field(2, ge=1, description="RFWP: fast-weight layers (each followed by a feed-forward block)")
    num_heads: int = Field(4, ge=1, description="RFWP: heads per fast-weight layer")
    head_dim: int = Field(32, ge=1, description="RFWP: per-head key/value size D (fast weights are D x D per head)")
    ff_dim: int = Field(512, ge=1, description="RFWP: hidden width of the feed-forward blocks")
    feature_map: Literal[FEATURE_MAPS] = Field(
        "paper", description="RFWP: the map of q and k. paper: each rule's map in the paper's code (elu+1 "
        "divided by its sum + 1e-5 for linear_transformer, delta_net and delta_lstm's feed-forward q, k; "
        "softmax inside rdn and delta_rnn); softmax or elu_p1 where the map is outside the recurrence")
    truncate_fast_weight_grad: bool = Field(
        False, description="RFWP: no gradient through the fast weights and the previous output across steps "
        "(the paper's RL code); false: full BPTT over the unroll")
    fw_bias: bool = Field(True, description="RFWP: biases in the slow nets and output projections of the "
                          "fast-weight layers (the paper's have none)")
    rdn_init: Literal[RDN_INITS] = Field(
        "small", description="RFWP rdn: R_q, R_k, R_v ~ N(0, 0.01/D) and r_b = 0 (small), or all ~ N(0, 1/D) (paper)")
    hidden_size: int = Field(256, ge=1, description="LSTM: hidden size")
    lstm_layers: int = Field(1, ge=1, description="LSTM: layers")
