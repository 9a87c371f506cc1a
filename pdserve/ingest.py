"""`pdserve ingest`: index files into a served pipeline's vector store.

Files are read and sent, a batch of documents at a time, to the pipeline's
`POST /v1/pipelines/<name>/documents`; the server chunks, embeds them on its embedding pool
and upserts them (a file already indexed is replaced, never duplicated). With `--ray-data`
the reading and sending run as a Ray Data pipeline, so a large corpus spreads over a Ray
cluster's nodes with no other change (the embedding pool scales on the serving side).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

#: File types ingested when a directory is given.
SUFFIXES = (".md", ".markdown", ".txt", ".rst")


def find_files(paths: Iterable[str]) -> list[Path]:
    """The files named, and the text/Markdown files under directories named, sorted."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"no such file or directory: {name}")
    return files


def document_id(path: Path) -> str:
    """A stable id: the path relative to the working directory when under it, else absolute
    (re-ingesting the same file from the same place replaces its chunks)."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(files), size):
        yield files[start:start + size]


def post_documents(url: str, pipeline: str, documents: list[dict[str, str]],
                   timeout_s: float = 600.0) -> dict[str, Any]:
    """One upsert call; raises with the server's error message on a non-2xx answer."""
    response = httpx.post(f"{url.rstrip('/')}/v1/pipelines/{pipeline}/documents",
                          json={"documents": documents}, timeout=timeout_s)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise RuntimeError(f"HTTP {response.status_code}: {message}")
    return response.json()


def read_documents(paths: Iterable[Path]) -> list[dict[str, str]]:
    return [{"id": document_id(p), "text": p.read_text(encoding="utf-8")} for p in paths]


def ingest_local(url: str, pipeline: str, files: list[Path], batch_docs: int) -> dict[str, int]:
    """Send the files in batches from this process, with a progress bar."""
    from tqdm import tqdm

    totals = {"documents": 0, "chunks": 0}
    with tqdm(total=len(files), unit="doc", desc=f"ingest → {pipeline}") as bar:
        for batch in batches(files, batch_docs):
            result = post_documents(url, pipeline, read_documents(batch))
            totals["documents"] += result["documents"]
            totals["chunks"] += result["chunks"]
            bar.update(len(batch))
            bar.set_postfix(chunks=totals["chunks"])
    return totals


class _PostBatch:
    """Ray Data map_batches step: read a batch of files on a worker and upsert them."""

    def __init__(self, url: str, pipeline: str, cwd: str) -> None:
        self.url, self.pipeline, self.cwd = url, pipeline, cwd

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        documents = [{"id": doc_id, "text": Path(path).read_text(encoding="utf-8")}
                     for doc_id, path in zip(batch["id"], batch["path"], strict=True)]
        result = post_documents(self.url, self.pipeline, documents)
        return {"documents": [result["documents"]], "chunks": [result["chunks"]]}


def ingest_ray_data(url: str, pipeline: str, files: list[Path], batch_docs: int,
                    concurrency: int, address: str | None) -> dict[str, int]:
    """The same upserts as a Ray Data pipeline (on the cluster at `address`, or a local one).

    Paths must be readable where the Ray workers run (a shared filesystem on a cluster).
    """
    import ray
    from tqdm import tqdm

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    items = [{"id": document_id(p), "path": str(p.resolve())} for p in files]
    dataset = ray.data.from_items(items).map_batches(
        _PostBatch, fn_constructor_args=(url, pipeline, os.getcwd()), batch_size=batch_docs,
        concurrency=concurrency, num_cpus=0.1)
    totals = {"documents": 0, "chunks": 0}
    with tqdm(total=len(files), unit="doc", desc=f"ingest → {pipeline} (ray data)") as bar:
        for row in dataset.iter_rows():
            totals["documents"] += int(row["documents"])
            totals["chunks"] += int(row["chunks"])
            bar.update(int(row["documents"]))
            bar.set_postfix(chunks=totals["chunks"])
    return totals
