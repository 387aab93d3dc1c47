"""Circuit quality of a dictionary over a fixed list of prompts, for the sweep's per-arm metric.

The model is converted once; each `score` writes the dictionary in circuit-tracer's format (in a
temporary folder, loaded fully into memory), builds the replacement model, attributes every prompt
and runs the spliced forward (`replacement.spliced_logits`) for the next-token agreement. On a
prompt where no feature of the dictionary fires (circuit-tracer draws no graph then), both scores
are 0: none of the model's computation goes through features.
"""

import torch

from pipeline.circuits import replacement
from pipeline.circuits.attribution import TraceOptions, attribute, scores
from pipeline.circuits.lens import convert
from pipeline.circuits.transcoders import Member, check, covered_layers
from pipeline.coders.base import Coder
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError


class CircuitScorer:
    def __init__(self, model: ModelConfig, prompts: list[str], options: TraceOptions, device: torch.device):
        if not prompts:
            raise ConfigError("train.trace_prompts: expected at least one prompt to trace")
        self.lens = convert(model, device)
        self.prompts, self.options, self.device = prompts, options, device

    def score(self, coder: Coder, source: dict) -> dict[str, float]:
        """The means over the prompts of the replacement and completeness scores, and the share of prompts whose
        top next token the spliced replacement model predicts as the model does."""
        return self.score_members([(coder, source)])

    def score_members(self, members: list[Member]) -> dict[str, float]:
        """`score` of a dictionary of one or several members (a set of single-layer transcoders)."""
        for i, (coder, source) in enumerate(members):
            check(coder, source, f"dictionary {i}", "train.trace_prompts")
        model = replacement.dictionary_model(self.lens, members, "scorer", self.device)
        layers = covered_layers(members)
        totals = {"replacement_score": 0.0, "completeness_score": 0.0, "next_token_agreement": 0.0}
        for prompt in self.prompts:
            token_ids = replacement.tokens(model, prompt)
            replacement_score, completeness_score = 0.0, 0.0
            if replacement.active_features(model, token_ids):
                replacement_score, completeness_score = scores(attribute(model, token_ids, self.options))
            clean = replacement.clean_logits(model, token_ids)[-1].argmax()
            spliced = replacement.spliced_logits(model, token_ids, layers)[-1].argmax()
            totals["replacement_score"] += replacement_score
            totals["completeness_score"] += completeness_score
            totals["next_token_agreement"] += float(clean == spliced)
        return {name: total / len(self.prompts) for name, total in totals.items()}
