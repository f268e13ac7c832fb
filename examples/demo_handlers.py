"""DEMO stage handlers: simulated work, so a new install shows episodes move end to end.

None of these does real processing. Each sleeps about a second while
reporting progress, then returns a small result marked ``"demo": true`` that
``process_episode`` stores under the stage's name in the episode's metadata.
The transcript, enrichment and editorial demos also fill the top-level
``transcript``, ``enrichment`` and ``editorial`` sections (through
``metadata_patch``), so the search index has text to find.

The shipped ``config/pipeline.yaml`` registers them; replace them with the
application's handlers there::

    worker:
      stages:
        transcribed: "myapp.transcription:transcribe"

A stage handler is ``async def handler(ctx: StageContext) -> Mapping[str, Any]``.
"""

from __future__ import annotations

import asyncio
from pathlib import PurePath
from typing import Any

from pipeline_db.stages import StageContext

DEMO_SECONDS = 0.8
DEMO_STEPS = 4
DEMO_NOTE = "made up by examples/demo_handlers.py; register a real handler in worker.stages"


async def prep(ctx: StageContext) -> dict[str, Any]:
    """Demo of ``prepped``: pretends to extract the audio track."""
    await _simulate(ctx, "extracting audio")
    return {"demo": True, "note": DEMO_NOTE, "audio": f"{_title(ctx)}.demo.wav"}


async def transcribe(ctx: StageContext) -> dict[str, Any]:
    """Demo of ``transcribed``: pretends to transcribe; the text names the file."""
    await _simulate(ctx, "transcribing")
    text = (
        f"Demo transcript of {_title(ctx)}. Welcome to the show: this text is a "
        "placeholder written by the demo transcriber, not by a speech model."
    )
    return {
        "demo": True,
        "note": DEMO_NOTE,
        "words": len(text.split()),
        "metadata_patch": {"transcript": {"text": text, "demo": True}},
    }


async def enrich(ctx: StageContext) -> dict[str, Any]:
    """Demo of ``enriched``: pretends to summarise and tag the transcript."""
    await _simulate(ctx, "summarising")
    enrichment = {
        "summary": f"Demo summary of {_title(ctx)}.",
        "topics": ["demo", "pipeline"],
        "guests": [],
        "demo": True,
    }
    return {"demo": True, "note": DEMO_NOTE, "metadata_patch": {"enrichment": enrichment}}


async def render(ctx: StageContext) -> dict[str, Any]:
    """Demo of ``rendered``: pretends to render the edited video."""
    await _simulate(ctx, "rendering")
    editorial = {"title": f"{_title(ctx)} (demo edit)", "demo": True}
    return {
        "demo": True,
        "note": DEMO_NOTE,
        "output": f"{_title(ctx)}.demo-render.mp4",
        "metadata_patch": {"editorial": editorial},
    }


async def discover_clips(ctx: StageContext) -> dict[str, Any]:
    """Demo of ``clips_discovered``: pretends to find two short clips."""
    await _simulate(ctx, "finding clips")
    clips = [
        {"start_ms": 0, "end_ms": 15_000, "score": 0.8, "title": "Demo clip 1"},
        {"start_ms": 30_000, "end_ms": 45_000, "score": 0.6, "title": "Demo clip 2"},
    ]
    return {"demo": True, "note": DEMO_NOTE, "clips": clips}


async def _simulate(ctx: StageContext, what: str) -> None:
    for step in range(DEMO_STEPS):
        await ctx.progress(percent=100 * step / DEMO_STEPS, message=f"demo: {what}")
        await asyncio.sleep(DEMO_SECONDS / DEMO_STEPS)


def _title(ctx: StageContext) -> str:
    return PurePath(ctx.episode.source_path).stem
