"""Human-readable views of a quality report: a metric table shared by the Markdown report and the
dataset card, and the Markdown report itself (rendered from ``templates/quality_report.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"


def fmt(value: Any, digits: int = 4) -> str:
    """Compact number formatting for tables (``-`` for missing values)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return str(value)


def _get(report: Mapping[str, Any], *path: str) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def summary_rows(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """(group, metric, value, meaning) rows for the headline numbers of a quality report."""
    rows: list[dict[str, str]] = []

    def add(group: str, metric: str, value: Any, meaning: str) -> None:
        if value is not None:
            rows.append({"group": group, "metric": metric, "value": fmt(value), "meaning": meaning})

    s = report.get("settings", {})
    intra, inter, div = (
        report.get("intra_class", {}),
        report.get("inter_class", {}),
        report.get("diversity", {}),
    )
    add("size", "identities", _get(report, "counts", "identities"), "classes")
    add("size", "images", _get(report, "counts", "images"), "rows")
    add("size", "images per identity (mean)", _get(report, "counts", "images_per_identity", "mean"), "")
    add(
        "consistency",
        "cos to class centre (mean)",
        _get(intra, "cos_to_centre", "mean"),
        "1 = identical images",
    )
    add(
        "consistency",
        "C_intra",
        intra.get("c_intra"),
        f"share of images with cos to centre >= {fmt(s.get('consistency_threshold'), 2)} (DCFace)",
    )
    add("consistency", "cos to condition (mean)", _get(intra, "cos_to_condition", "mean"), "cos(f(x), y)")
    add("consistency", "cos to anchor (mean)", _get(intra, "cos_to_anchor", "mean"), "cos(f(x), w)")
    flips = intra.get("identity_flips") or {}
    add(
        "consistency",
        "identity flips",
        flips.get("share"),
        f"share of images below cos {fmt(flips.get('threshold'), 2)} to their {flips.get('measured_against')}",
    )
    add("consistency", "genuine cos (mean)", _get(intra, "genuine", "mean"), "all same-identity image pairs")
    add(
        "separability",
        "uniqueness U_class",
        _get(inter, "uniqueness", "share"),
        f"greedy share of centres with cos <= {fmt(s.get('uniqueness_threshold'), 2)} to all kept ones (DCFace)",
    )
    add(
        "separability",
        "centre impostor cos (mean)",
        _get(inter, "centre_impostor", "mean"),
        "all centre pairs",
    )
    add(
        "separability",
        "centre impostor cos (max)",
        _get(inter, "centre_impostor", "max"),
        "closest two identities",
    )
    add(
        "separability",
        "image impostor cos (mean)",
        _get(inter, "image_impostor_sampled", "mean"),
        f"{fmt(_get(inter, 'image_impostor_sampled', 'count'))} "
        + ("sampled" if _get(inter, "image_impostor_sampled", "sampled") else "(all)")
        + " cross-identity pairs",
    )
    add(
        "separability",
        "Fisher discriminant ratio",
        inter.get("fisher_discriminant_ratio"),
        "genuine vs impostor",
    )
    add("separability", "EER", inter.get("eer"), "equal error rate")
    for fmr, point in (inter.get("fnmr_at_fmr") or {}).items():
        add(
            "separability", f"FNMR @ FMR {fmr}", point.get("fnmr"), f"threshold {fmt(point.get('threshold'))}"
        )
    packing = inter.get("anchor_packing")
    if packing:
        add(
            "separability",
            "anchor min angle (deg)",
            packing.get("min_angle_deg"),
            "packing of the conditions",
        )
    add("diversity", "embedding spread (mean)", _get(div, "embedding_spread", "mean"), "1 - |class mean|^2")
    for name, attr in (div.get("attributes") or {}).items():
        add(
            "diversity",
            f"{name} std (within identity)",
            attr.get("mean_within_class_std"),
            f"overall std {fmt(attr.get('std'), 2)}",
        )
    leak = report.get("leakage")
    if leak:
        add(
            "privacy",
            "identities flagged as leaked",
            leak.get("flagged_identities"),
            f"cos > {fmt(leak.get('threshold'), 2)} to one of {fmt(leak.get('reference_identities'))} real identities",
        )
        add("privacy", "images flagged", leak.get("flagged_images"), "image-to-real-centre")
        add("privacy", "max image-to-real cos", _get(leak, "image_to_real_centre", "max"), "")
    return rows


def render_quality_markdown(
    report: Mapping[str, Any], figures: Mapping[str, str] | None = None, title: str = "Dataset quality report"
) -> str:
    """The Markdown quality report (figures given as paths relative to the report)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True)
    template = env.get_template("quality_report.md")
    return template.render(
        title=title, report=report, rows=summary_rows(report), figures=dict(figures or {}), fmt=fmt
    )
