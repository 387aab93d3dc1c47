"""Circuit quality of a dictionary over a fixed list of prompts, for the sweep's per-arm metric.

The model is converted once; each `score` writes the dictionary in circuit-tracer's format (in a
temporary folder, loaded fully into memory), builds the replacement model, attributes every prompt
and runs the spliced forward (`replacement.spliced_logits`) for the next-token agreement.
"""

import tempfile
from pathlib import Path

import torch

from pipeline.circuits import replacement
from pipeline.circuits.attribution import TraceOptions, attribute, scores
from pipeline.circuits.lens import convert
from pipeline.circuits.transcoders import Member, check, covered_layers, load_folder, write_folder
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
        model = self._model(members)
        layers = covered_layers(members)
        totals = {"replacement_score": 0.0, "completeness_score": 0.0, "next_token_agreement": 0.0}
        for prompt in self.prompts:
            token_ids = replacement.tokens(model, prompt)
            replacement_score, completeness_score = scores(attribute(model, token_ids, self.options))
            clean = replacement.clean_logits(model, token_ids)[-1].argmax()
            spliced = replacement.spliced_logits(model, token_ids, layers)[-1].argmax()
            totals["replacement_score"] += replacement_score
            totals["completeness_score"] += completeness_score
            totals["next_token_agreement"] += float(clean == spliced)
        return {name: total / len(self.prompts) for name, total in totals.items()}

    def _model(self, members: list[Member]):
        config = self.lens.config
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "dictionary"
            write_folder(members, folder)
            transcoders = load_folder(folder, config.n_layers, "scorer", self.device, config.dtype)
        return replacement.replacement_model(self.lens, transcoders)
