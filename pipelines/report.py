"""The run summary: ``RUN_DIR/report.md`` and ``report.html`` (sample grids, ROC curves, result tables).

Built from what the stages wrote (bench ``table.json``, ``attack.json``, ``quality.json``, the
datasets themselves) so it can be rebuilt at any time; the result table is also returned as text for
the terminal. Both files hold the same blocks: headings, tables, images (paths relative to RUN_DIR).
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facesynth.core.atomic_io import atomic_write

logger = logging.getLogger(__name__)

FIGURES = "report_figures"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: str
    caption: str


Block = str | Table | Image  # a plain str is a paragraph; "# ..." strings are headings


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}"


def bench_table(data: dict[str, Any]) -> Table:
    """Models as rows, benchmarks (+ their average) as columns: accuracy (%) +- fold std."""
    names = list(data["benchmarks"]) + (["average"] if len(data["benchmarks"]) > 1 else [])
    rows = []
    for label, entry in data["models"].items():
        cells = []
        for name in names:
            row = entry["benchmarks"].get(name)
            cells.append("-" if row is None else f"{_pct(row['accuracy'])} +- {_pct(row['accuracy_std'])}")
        first = entry["benchmarks"].get(data["benchmarks"][0], {})
        tars = first.get("tar_at_far", {})
        far = "0.001" if "0.001" in tars else next(iter(tars), None)
        rows.append([label, entry["method"], *cells, _pct(tars.get(far)) if far else "-"])
    far_label = "TAR@FAR=1e-3 (%)"
    return Table(
        ["model", "method", *[f"{n} acc (%)" for n in names], f"{data['benchmarks'][0]} {far_label}"], rows
    )


def attack_table(results: dict[str, Any]) -> Table:
    from facesynth.pipelines.attack import METRIC_COLUMNS

    rows = [
        [name] + [f"{metrics[key]:.3f}" if key in metrics else "n/a" for key, _ in METRIC_COLUMNS]
        for name, metrics in results["attackers"].items()
    ]
    return Table(["attacker", *[label for _, label in METRIC_COLUMNS]], rows)


def _shard_grid(dataset: Path, out: Path, title: str) -> Path | None:
    """A 4 identities x 4 images grid of a shard dataset (None when it cannot be read)."""
    from facesynth.core.shard_reader import read_columns
    from facesynth.data_cards import figures
    from facesynth.pipelines.quality import _grid_images

    try:
        labels = sorted(set(read_columns(dataset, ["label"])["label"].to_pylist()))[:4]
        grid = _grid_images(dataset, labels, 4)
        return figures.sample_grid(grid, out, row_titles=[str(label) for label in labels], title=title)
    except Exception as exc:  # noqa: BLE001 - a figure must never fail the run
        logger.warning("%s: no sample grid for the report (%s)", dataset, exc)
        return None


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _summary_text(record: dict[str, Any]) -> str:
    skip = {"hash", "kind", "status", "seconds", "output"}
    return ", ".join(f"{k}={v}" for k, v in record.items() if k not in skip and v is not None)


def report_blocks(config: Any, planned: list[Any], records: dict[str, Any], seconds: float) -> list[Block]:
    """The report's content, in reading order."""
    run_dir = Path(config.run_dir)
    figures_dir = run_dir / FIGURES
    figures_dir.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [f"# facesynth run: {run_dir.name}"]
    if config.description:
        blocks.append(config.description.strip())
    blocks.append(
        f"{len(planned)} stages; this invocation took {seconds:.0f} s. Settings: `run_config.yaml`."
    )

    results: list[Block] = []
    for stage in planned:
        record = records.get(stage.name, {})
        if record.get("status") != "done":
            continue
        kind = stage.spec.kind
        if kind == "bench" and (stage.stage_dir / "table.json").is_file():
            data = json.loads((stage.stage_dir / "table.json").read_text())
            results += [f"## Verification: {stage.name}", bench_table(data)]
            if (stage.stage_dir / "roc.png").is_file():
                results.append(
                    Image(_rel(stage.stage_dir / "roc.png", run_dir), f"ROC curves ({stage.name})")
                )
        elif kind == "attack" and (stage.stage_dir / "attack.json").is_file():
            data = json.loads((stage.stage_dir / "attack.json").read_text())
            results += [
                f"## Attack: {stage.name}",
                f"Target {data['target'].get('method', '?')} ({data['target_path']}); {data['num_victims']} victim "
                f"images of {data['num_victim_identities']} identities, disjoint from the attacker's "
                f"{data['num_public_identities']} public identities.",
                attack_table(data),
            ]
            if (stage.stage_dir / "samples.png").is_file():
                results.append(
                    Image(_rel(stage.stage_dir / "samples.png", run_dir), "victims and recoveries")
                )
    blocks += results

    grids: list[Block] = []
    for stage in planned:
        record = records.get(stage.name, {})
        if record.get("status") != "done":
            continue
        if stage.kind.produces == "shards":
            grid = _shard_grid(
                stage.output, figures_dir / f"{stage.name}.png", f"{stage.name} ({stage.spec.kind})"
            )
            if grid is not None:
                grids.append(Image(_rel(grid, run_dir), f"{stage.name}: 4 identities x 4 images"))
        elif stage.spec.kind == "train_generator":
            samples = sorted((stage.stage_dir / "samples").glob("*.png"))
            if samples:
                grids.append(Image(_rel(samples[-1], run_dir), f"{stage.name}: samples at the last step"))
        elif stage.spec.kind == "quality" and stage.output.is_file():
            report = json.loads(stage.output.read_text())
            for name, rel in report.get("figures", {}).items():
                grids.append(Image(_rel(stage.output.parent / rel, run_dir), f"{stage.name}: {name}"))
    if grids:
        blocks += ["## Samples and figures", *grids]

    rows = []
    for stage in planned:
        record = records.get(stage.name, {})
        rows.append(
            [
                stage.name,
                stage.spec.kind,
                record.get("status", "not run"),
                f"{record['seconds']:.1f}" if "seconds" in record else "-",
                _summary_text(record),
            ]
        )
    blocks += ["## Stages", Table(["stage", "kind", "status", "seconds", "summary"], rows)]
    return blocks


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def text_table(table: Table) -> str:
    """Aligned plain-text columns for the terminal."""
    widths = [max(len(str(c)) for c in col) for col in zip(table.header, *table.rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row) for row in [table.header, *table.rows])


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Table):
            parts.append(_md_table(block))
        elif isinstance(block, Image):
            parts.append(f"![{block.caption}]({block.path})\n\n*{block.caption}*")
        else:
            parts.append(block)
    return "\n\n".join(parts) + "\n"


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for block in blocks:
        if isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            body.append(
                f'<figure><img src="{html.escape(block.path)}" alt="{html.escape(block.caption)}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
            )
        elif block.startswith("## "):
            body.append(f"<h2>{html.escape(block[3:])}</h2>")
        elif block.startswith("# "):
            body.append(f"<h1>{html.escape(block[2:])}</h1>")
        else:
            body.append(f"<p>{html.escape(block)}</p>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "figure{display:inline-block;margin:0.5em}img{max-width:520px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_run_report(
    config: Any, planned: list[Any], records: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """Write report.md and report.html in RUN_DIR; returns their paths and the terminal summary."""
    run_dir = Path(config.run_dir)
    blocks = report_blocks(config, planned, records, seconds)
    with atomic_write(run_dir / "report.md", "w") as handle:
        handle.write(to_markdown(blocks))
    with atomic_write(run_dir / "report.html", "w") as handle:
        handle.write(to_html(blocks, f"facesynth run {run_dir.name}"))
    terminal: list[str] = []
    heading = ""
    for block in blocks:
        if isinstance(block, str) and block.startswith("## "):
            heading = block[3:]
        elif isinstance(block, Table) and heading != "Stages":
            terminal += [heading, text_table(block), ""]
    return {
        "markdown": run_dir / "report.md",
        "html": run_dir / "report.html",
        "terminal": "\n".join(terminal).rstrip() or "(no result tables)",
    }
