"""The demo's offline half: draw a labelled image set, run the caption, embed, classify and
index jobs over it on Ray Data, and score their answers against what was drawn."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from raysight.shapes import ALL_CAPTIONS, LABELS_FILE, write_shapes_folder

if TYPE_CHECKING:
    from batch_jobs.index import IndexSummary
    from batch_jobs.pipeline import JobSummary

VLM = "builtin:shapes-vlm"
CLIP = "builtin:shapes-clip"
# One of each way a file can pretend to be an image: truncated PNG, text, empty.
BROKEN_FILES = 3


@dataclass(frozen=True)
class DrawnSet:
    """The images the demo drew: absolute path -> caption ('' for a broken file)."""

    folder: Path
    captions: dict[str, str]

    @property
    def images(self) -> list[str]:
        return [path for path, caption in self.captions.items() if caption]

    @property
    def broken(self) -> list[str]:
        return [path for path, caption in self.captions.items() if not caption]


def draw_images(folder: Path, count: int, seed: int) -> DrawnSet:
    """Draw `count` shapes plus the broken files into `folder`, with labels.csv beside them."""
    folder = folder.resolve()
    write_shapes_folder(folder, count, seed, corrupt=BROKEN_FILES)
    with open(folder / LABELS_FILE, newline="", encoding="utf-8") as handle:
        captions = {str(folder / row["path"]): row["caption"] for row in csv.DictReader(handle)}
    return DrawnSet(folder, captions)


@dataclass(frozen=True)
class FailedRow:
    """A row a job wrote without an answer, and why."""

    path: str
    error_type: str
    error: str


@dataclass(frozen=True)
class Scored:
    """How many of a job's answers equal the drawn caption, and the first few that do not."""

    right: int
    total: int
    wrong: list[tuple[str, str, str]] = field(default_factory=list)  # path, drawn, answered

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 0.0


@dataclass(frozen=True)
class OfflineResult:
    caption: "JobSummary"
    embed: "JobSummary"
    classify: "JobSummary"
    index: "IndexSummary"
    captions: Scored
    classes: Scored
    failed: dict[str, list[FailedRow]]  # job -> its failed rows

    @property
    def jobs(self) -> list["JobSummary"]:
        return [self.caption, self.embed, self.classify]


def read_rows(folder: Path, columns: list[str]) -> list[dict]:
    """Every row of a job's output folder (its Parquet part files)."""
    import pyarrow.parquet as pq

    return pq.read_table(folder, columns=columns).to_pylist()


def score(rows: list[dict], drawn: DrawnSet, column: str, examples: int = 5) -> Scored:
    """Compare `column` of each answered row with the drawn caption of its image."""
    right, total, wrong = 0, 0, []
    for row in rows:
        expected = drawn.captions.get(row["path"])
        if not expected:
            continue
        total += 1
        if row[column] == expected:
            right += 1
        elif len(wrong) < examples:
            wrong.append((row["path"], expected, row[column]))
    return Scored(right, total, wrong)


def failed_rows(rows: list[dict]) -> list[FailedRow]:
    failed = [FailedRow(row["path"], row["error_type"], row["error"])
              for row in rows if row["error"] is not None]
    return sorted(failed, key=lambda row: row.path)


def run_jobs(drawn: DrawnSet, out: Path) -> OfflineResult:
    """Caption, embed, classify (over the twelve captions) and index the drawn set."""
    from batch_jobs import build_index, run_caption, run_classify, run_embed

    images = str(drawn.folder)
    # The demo owns these folders: a re-run starts them again instead of resuming.
    options = {"overwrite": True, "progress": False}
    caption = run_caption(VLM, images, str(out / "captions"), **options)
    embed = run_embed(CLIP, images, str(out / "embeddings"), **options)
    index = build_index(str(out / "embeddings"), str(out / "index"))
    classify = run_classify(CLIP, images, str(out / "classes"), labels=ALL_CAPTIONS, **options)

    caption_rows = read_rows(out / "captions", ["path", "text", "error", "error_type"])
    class_rows = read_rows(out / "classes", ["path", "label", "error", "error_type"])
    embed_rows = read_rows(out / "embeddings", ["path", "error", "error_type"])
    return OfflineResult(
        caption=caption,
        embed=embed,
        classify=classify,
        index=index,
        captions=score(caption_rows, drawn, "text"),
        classes=score(class_rows, drawn, "label"),
        failed={
            "caption": failed_rows(caption_rows),
            "embed": failed_rows(embed_rows),
            "classify": failed_rows(class_rows),
        },
    )
