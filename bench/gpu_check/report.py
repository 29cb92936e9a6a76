"""The short table the GPU check prints: steps' times, checks' verdicts, throughput."""

from __future__ import annotations


def _check_line(check: dict) -> str:
    status = "PASS" if check["passed"] else "FAIL"
    if "error" in check:
        note = check["error"].splitlines()[0][:100]
    elif "min_cosine" in check:
        note = f"min cosine {check['min_cosine']:.5f} over {check['rows']} inputs"
    elif "near_tie_rate" in check:
        note = (f"{check['equal_rows']}/{check['rows']} equal, {check['near_tie_rows']} near "
                f"ties (rate {check['near_tie_rate']:.2f}), first-step logit diff "
                f"{check['first_step_logit_diff']:.3g}")
    elif "hits_second_pass" in check:
        note = (f"{check['hits_second_pass']} hits / {check['images']} images, features on "
                f"{','.join(check['feature_devices']) or '-'}, repeat equal "
                f"{check['hits_equal_misses']}, vs uncached {check['against_uncached']['equal_rows']}"
                f"/{check['against_uncached']['rows']} equal")
    else:
        note = ", ".join(f"{k} {v}" for k, v in check.items() if k not in ("name", "passed"))
    return f"  {status}  {check['name']:42s} {note}"


def format_report(payload: dict) -> str:
    """Steps, checks and figures of one run, as plain text."""
    lines = [f"GPU check on {payload['device']}"
             + (f" ({payload['machine'].get('gpu')})" if payload["machine"].get("gpu") else "")
             + (", tiny models" if payload["tiny"] else "")]
    lines.append("steps: " + ", ".join(f"{k} {v} s" for k, v in payload["steps"].items()))
    for arch, model in payload["models"].items():
        lines.append(f"model {arch} '{model['size']}': {model['params'] / 1e6:.1f}M parameters, "
                     f"built in {model['build_s']} s")
    lines.append("checks:")
    lines += [_check_line(check) for check in payload["checks"]]
    figures = payload["figures"]
    for kind in ("embeddings", "generation"):
        if kind not in figures:
            continue
        lines.append(f"{kind}:  variant  clients  req/s  tok/s  p50 ms  GPU busy %")
        for row in figures[kind]:
            lines.append(f"  {row['variant']:>14s} {row['clients']:8d} {row['requests_per_s']:6g} "
                         f"{row['tokens_per_s']:6g} {row['p50_ms']:7g}  {row['gpu_busy_pct']}")
    if "offline_embed" in figures:
        o = figures["offline_embed"]
        lines.append(f"offline embed over {o['images']} images: job {o['job_images_per_s']} img/s "
                     f"(GPU busy {o['job_gpu_busy_pct']}%), plain loop {o['loop_images_per_s']} "
                     f"img/s (GPU busy {o['loop_gpu_busy_pct']}%), ratio {o['ratio_to_loop']}")
    return "\n".join(lines)
