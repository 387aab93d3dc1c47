"""One prompt's attribution graph (circuit-tracer's `attribute`), pruned, scored and counted.

circuit-tracer's replacement score is the share of the tokens' influence on the logits that flows
through features rather than error nodes; its completeness score the influence-weighted share of
each node's inputs that come from features or tokens. Both are 1 for a dictionary that reproduces
every MLP exactly. Pruning keeps the nodes holding `node_threshold` of the logits' influence (and
always the tokens and logits), then the edges holding `edge_threshold` of it.
"""

import warnings
from dataclasses import dataclass

import torch

from pipeline.config import TraceConfig


@dataclass(frozen=True)
class TraceOptions:
    """circuit-tracer's attribution and pruning options (`trace.*` in the configuration)."""

    batch_size: int = 256  # source nodes per backward pass
    max_feature_nodes: int | None = None  # most feature nodes in a graph; None = every active feature
    offload: str | None = None  # None, "cpu" or "disk": where model parts wait while not needed
    max_n_logits: int = 10  # most logit nodes
    desired_logit_prob: float = 0.95  # logit nodes are added until their probabilities sum to this
    node_threshold: float = 0.8  # share of influence the pruned graph's nodes keep
    edge_threshold: float = 0.98  # share of influence the pruned graph's edges keep

    @classmethod
    def of(cls, trace: TraceConfig) -> "TraceOptions":
        return cls(
            batch_size=trace.batch_size,
            max_feature_nodes=trace.max_feature_nodes or None,
            offload=None if trace.offload == "none" else trace.offload,
            max_n_logits=trace.max_n_logits,
            desired_logit_prob=trace.desired_logit_prob,
            node_threshold=trace.node_threshold,
            edge_threshold=trace.edge_threshold,
        )


@dataclass
class PromptTrace:
    """A prompt's graph and pruning masks, kept on the CPU (the device's memory is freed for the next prompt)."""

    prompt: str
    graph: object  # circuit_tracer.graph.Graph
    node_mask: torch.Tensor  # [nodes] bool: kept by pruning
    edge_mask: torch.Tensor  # [nodes, nodes] bool: kept by pruning (target row, source column)
    replacement_score: float
    completeness_score: float
    top_logits: list[tuple[str, float]]  # (token, probability) of each logit node, most probable first

    def numbers(self) -> dict:
        """What report.md and scores.json record of the prompt."""
        adjacency = self.graph.adjacency_matrix
        kept = self.edge_mask & (adjacency != 0)
        kept &= self.node_mask[:, None] & self.node_mask[None, :]
        return {
            "prompt": self.prompt,
            "replacement_score": self.replacement_score,
            "completeness_score": self.completeness_score,
            "nodes": int(adjacency.shape[0]),
            "edges": int((adjacency != 0).sum()),
            "pruned_nodes": int(self.node_mask.sum()),
            "pruned_edges": int(kept.sum()),
            "top_logits": [{"token": token, "probability": p} for token, p in self.top_logits],
        }


def attribute(model, token_ids: torch.Tensor, options: TraceOptions):
    """circuit-tracer's attribution graph of the prompt `token_ids` (with its BOS) on the replacement model."""
    from circuit_tracer import attribute as circuit_attribute

    with warnings.catch_warnings():
        # circuit-tracer's backward hooks sit on the outputs of a frozen model by design; torch warns of it each time
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        return circuit_attribute(
            token_ids,
            model,
            max_n_logits=options.max_n_logits,
            desired_logit_prob=options.desired_logit_prob,
            batch_size=options.batch_size,
            max_feature_nodes=options.max_feature_nodes,
            offload=options.offload,
        )


def scores(graph) -> tuple[float, float]:
    """(replacement score, completeness score) of an attribution graph."""
    from circuit_tracer.graph import compute_graph_scores

    return compute_graph_scores(graph)


def trace_prompt(model, prompt: str, token_ids: torch.Tensor, options: TraceOptions) -> PromptTrace:
    from circuit_tracer.graph import prune_graph

    graph = attribute(model, token_ids, options)
    graph.input_string = prompt
    pruned = prune_graph(graph, options.node_threshold, options.edge_threshold)
    replacement, completeness = scores(graph)
    probabilities = graph.logit_probabilities.tolist()
    logits = [(target.token_str, p) for target, p in zip(graph.logit_targets, probabilities, strict=True)]
    graph.to("cpu")
    return PromptTrace(
        prompt, graph, pruned.node_mask.cpu(), pruned.edge_mask.cpu(), replacement, completeness,
        sorted(logits, key=lambda t: -t[1]),
    )  # fmt: skip
