"""report.md and scores.json of a trace: per prompt, the top logits, the replacement and completeness scores, and
the nodes and edges before and after pruning; the means of the scores over the prompts."""

from statistics import fmean

SCORES = ("replacement_score", "completeness_score")


def scores_payload(dictionary_id: str, runs: list[str], model: str, prompts: list[dict]) -> dict:
    """scores.json: the numbers of each prompt (`PromptTrace.numbers`) and the mean of each score."""
    means = {name: fmean(p[name] for p in prompts) for name in SCORES}
    return {"dictionary": dictionary_id, "runs": runs, "model": model, "mean": means, "prompts": prompts}


def report_text(payload: dict, slugs: list[str]) -> str:
    mean = payload["mean"]
    lines = [
        f"# Attribution graphs of {payload['dictionary']} on {payload['model']}",
        "",
        f"Runs: {', '.join(payload['runs'])}. Mean over {len(slugs)} prompts: replacement score "
        f"{mean['replacement_score']:.3f}, completeness score {mean['completeness_score']:.3f}.",
        "",
        "| graph | prompt | replacement | completeness | nodes | edges | pruned nodes | pruned edges | top logits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for slug, p in zip(slugs, payload["prompts"], strict=True):
        logits = ", ".join(f"{t['token']!r} {t['probability']:.3g}" for t in p["top_logits"])
        prompt = p["prompt"].replace("|", "\\|")
        lines.append(
            f"| {slug} | `{prompt}` | {p['replacement_score']:.3f} | {p['completeness_score']:.3f} | {p['nodes']} "
            f"| {p['edges']} | {p['pruned_nodes']} | {p['pruned_edges']} | {logits} |"
        )
    return "\n".join(lines) + "\n"
